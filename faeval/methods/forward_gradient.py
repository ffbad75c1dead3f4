"""Forward gradient: credits from directional derivatives computed by forward-mode AD."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from functools import partial
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import jvp
from torch.nn.attention import SDPBackend, sdpa_kernel
from typing_extensions import override

from faeval.backbones import Trace
from faeval.errors import ConfigError
from faeval.methods.ep import running_statistics_frozen
from faeval.methods.step_draws import StepDrawMethod
from faeval.seeding import mixed_seed


class ForwardGradient(StepDrawMethod):
    """Forward gradient with activity perturbation: a_l = (g_l·v_l) v_l, v_l ~ N(0, I).

    (Baydin et al. 2022, "Gradients without Backpropagation"; perturbing the activities h_l
    rather than the weights, as Ren et al. 2023 do.) For each layer l = 0..L and each sample
    a direction v_l shaped like h_l is drawn; the directional derivative ∂ℓ_i/∂h_l·v_l of the
    sample's loss, the network run from h_l up to the loss, is computed in one forward-mode
    pass (``torch.func.jvp``), with no backward pass. Since E[v vᵀ] = I,
    E[(g·v) v] = g: the credit is unbiased for ∂ℓ_i/∂h_l, with a variance that grows with
    |h_l| (each coordinate's variance is ‖g‖² + g_j²). ``directions`` = K averages K
    independent draws, dividing the variance by K at K times the cost.

    The directions are seeded per step (``StepDrawMethod``), drawn layer by layer
    (v_0, …, v_L, each (K, B, *h_l.shape)) from the step's generator; with seeds stacked, each
    seed's from its own generator, and each seed's K·B perturbed rows run together in the
    forward-mode pass (seed-major, as the stacked layers take them).

    BatchNorm in training mode (SmallCNN) couples the samples of the batch; the tangent of
    sample i's loss then has terms from the other samples' directions, and the estimate is
    unbiased for the sample's own-state derivative only. The forward-mode passes leave the
    running statistics alone. The diagnostics run in eval mode, where samples do not couple.

    Local losses (``local_losses=True``, Ren et al. 2023's activity-perturbed forward gradient
    with local greedy losses): each layer l < L has its own linear classifier H_l on the
    flattened h_l, and the derivative taken at h_l is that of the local loss
    ℓ_l = CE(H_l(h_l), y) rather than of the network's: a_l = (∂ℓ_l/∂h_l·v) v, a forward pass
    through H_l alone. The top layer's local loss is the network's own (the readout on h_L).
    The heads are helper nets trained by the exact gradient of their own loss on the detached
    h_l (one linear layer's: no backward pass through the network), at ``head_lr``; they are
    in every checkpoint. With local losses a_l estimates ∂ℓ_l/∂h_l, not g_l: the
    diagnostics measure how far the local objective's direction is from the global one.

    Args:
        directions: K, the directions averaged per layer and sample.
        local_losses: take each layer's derivative of a local loss (above).
        head_lr: the learning rate of the local heads.
        *args, **kwargs: ``draw_seed`` (``StepDrawMethod``) and the arguments of
            ``CreditMethod``.

    Raises:
        ConfigError: ``directions`` < 1, or ``head_lr`` <= 0.
    """

    stack_refusal: ClassVar[str | None] = None  # stacks (tests/stacked/test_convert.py)

    stream = 3  # the (seed, 3, t) stream of directions

    def __init__(
        self,
        *args,
        directions: int = 1,
        local_losses: bool = False,
        head_lr: float = 1e-3,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if directions < 1:
            raise ConfigError(
                f"ForwardGradient needs directions >= 1, got {directions}; pass "
                "--model.directions 1 or more"
            )
        if head_lr <= 0:
            raise ConfigError(f"ForwardGradient needs head_lr > 0, got {head_lr}")
        self.directions = directions
        self.local_losses = local_losses
        self.head_lr = head_lr
        self.heads: nn.ModuleList | None = None
        if local_losses:
            sizes = [math.prod(s) for s in self.backbone.state_shapes()[:-1]]
            classes = self.backbone.num_classes
            with torch.random.fork_rng(devices=[]):  # the heads' own stream (seed, 3)
                torch.manual_seed(mixed_seed(self.draw_seed, self.stream))
                self.heads = nn.ModuleList(nn.Linear(d, classes) for d in sizes)

    def draw_directions(self, trace: Trace) -> list[Tensor]:
        """v_l for l = 0..L, each (seeds, K, B, *h_l.shape[1:]), standard normal, from the step's
        draw: each seed's (K, B, …) from its own generator (``StepDrawMethod.step_draws``),
        layer by layer; alone, seeds = 1."""
        k = self.directions

        def draw(gen: torch.Generator, *states: Tensor) -> list[Tensor]:
            return [torch.randn((k, *h.shape), generator=gen) for h in states]

        per_seed = self.step_draws(draw, *trace.states)  # [seed][layer] (K, B, ...)
        return [
            torch.stack(layer).to(h)  # (seeds, K, B, ...)
            for layer, h in zip(zip(*per_seed, strict=True), trace.states, strict=True)
        ]

    def layer_logits(self, layer: int) -> Callable[[Tensor], Tensor]:
        """The map from h_layer to the logits whose loss layer ``layer`` differentiates: the
        network run to its readout, or the layer's local head."""
        if self.heads is None or layer == self.backbone.num_blocks:
            return partial(self.backbone.forward_from, layer)
        return lambda h: self.heads[layer](h.flatten(1))  # (B, |h_l|) @ (|h_l|, C) -> (B, C)

    @override
    def credits(self, trace: Trace, y: Tensor) -> list[Tensor]:
        k, seeds = self.directions, self.stack_size
        directions = self.draw_directions(trace)
        credits = []
        with torch.no_grad(), running_statistics_frozen(self.backbone):
            for layer, (h, v) in enumerate(zip(trace.states, directions, strict=True)):
                ones = [1] * (h.dim() - 1)
                # The K draws side by side in one pass, each seed's K·B rows together
                # (seed-major, as a stacked batch): (seeds·B, ...) -> (seeds·K·B, ...)
                # (a contiguous copy, as h.repeat(K) made it alone: ViT's token states are not
                # contiguous, and the kernels round by layout)
                rows = h.unflatten(0, (seeds, 1, -1)).repeat(1, k, 1, *ones).flatten(0, 2)
                labels = y.unflatten(0, (seeds, 1, -1)).repeat(1, k, 1).flatten()
                t = directional_derivatives(self.layer_logits(layer), rows, labels, v.flatten(0, 2))
                t = t.view(*v.shape[:3], *ones)  # (seeds·K·B,) -> (seeds, K, B, 1, ...): g_i·v_ik
                # mean_k (g·v_k) v_k plays ∂ℓ_i/∂h_l: (seeds, B, ...) -> (seeds·B, ...)
                credits.append((t * v).mean(1).flatten(0, 1))
        return credits

    @override
    def auxiliary_loss(self, trace: Trace, y: Tensor) -> Tensor | float:
        """The local heads' cross-entropy on the detached states (0 without local losses)."""
        if self.heads is None:
            return 0.0
        losses = [
            F.cross_entropy(head(h.detach().flatten(1)), y, reduction="none")
            for head, h in zip(self.heads, trace.states, strict=False)  # h_0..h_{L-1}
        ]
        per_sample = torch.stack(losses, 1).sum(1)  # Σ_l ℓ_l, (N,)
        self.accumulate("train/local_loss", self.seed_means(per_sample))
        return self.batch_mean(per_sample)  # mean over the batch (each seed's own)

    @override
    def trained_helpers(self) -> tuple[nn.Module, float] | None:
        return None if self.heads is None else (self.heads, self.head_lr)


def directional_derivatives(
    logits_of: Callable[[Tensor], Tensor], h: Tensor, y: Tensor, v: Tensor
) -> Tensor:
    """∂ℓ_i/∂h · v_i for every row i: the tangent of the per-sample losses, (N,).

    One forward-mode pass from the state ``h`` through ``logits_of`` to the per-sample
    cross-entropy, along the tangent ``v`` (same shape as ``h``).
    """

    def losses(state: Tensor) -> Tensor:
        return F.cross_entropy(logits_of(state), y, reduction="none")

    with warnings.catch_warnings():
        # torch's forward AD scripts its jvp decompositions on first use, and torch 2.14
        # deprecates the scripting it does itself: not a warning about faeval's code.
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
        # Fused attention kernels have no forward-mode derivative; the math one is composite.
        with sdpa_kernel(SDPBackend.MATH):
            _, tangent = jvp(losses, (h,), (v,))
    return tangent
