"""Forward gradient: credits from directional derivatives computed by forward-mode AD."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import jvp
from torch.nn.attention import SDPBackend, sdpa_kernel
from typing_extensions import override

from faeval.backbones import Trace
from faeval.errors import ConfigError
from faeval.methods.ep import running_statistics_frozen
from faeval.methods.step_draws import StepDrawMethod


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
    (v_0, …, v_L, each (K, B, *h_l.shape)) from the step's generator.

    BatchNorm in training mode (SmallCNN) couples the samples of the batch; the tangent of
    sample i's loss then has terms from the other samples' directions, and the estimate is
    unbiased for the sample's own-state derivative only. The forward-mode passes leave the
    running statistics alone. The diagnostics run in eval mode, where samples do not couple.

    Local losses (Ren et al. 2023, the directional derivative of a per-block local loss
    through an auxiliary head rather than of the global loss) are not implemented: the
    derivative is always of the network's own cross-entropy.

    Args:
        directions: K, the directions averaged per layer and sample.
        *args, **kwargs: ``draw_seed`` (``StepDrawMethod``) and the arguments of
            ``CreditMethod``.

    Raises:
        ConfigError: ``directions`` < 1.
    """

    stream = 3  # the (seed, 3, t) stream of directions

    def __init__(self, *args, directions: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if directions < 1:
            raise ConfigError(
                f"ForwardGradient needs directions >= 1, got {directions}; pass "
                "--model.directions 1 or more"
            )
        self.directions = directions

    def draw_directions(self, trace: Trace) -> list[Tensor]:
        """v_l for l = 0..L, each (K, B, *h_l.shape), standard normal, from the step's draw."""
        gen = self.step_generator()
        k = self.directions
        return [torch.randn((k, *h.shape), generator=gen).to(h) for h in trace.states]

    @override
    def credits(self, trace: Trace, y: Tensor) -> list[Tensor]:
        k = self.directions
        directions = self.draw_directions(trace)
        credits = []
        with torch.no_grad(), running_statistics_frozen(self.backbone):
            for layer, (h, v) in enumerate(zip(trace.states, directions, strict=True)):
                ones = [1] * (h.dim() - 1)
                # The K draws side by side in one pass: (K, B, ...) -> (K·B, ...)
                t = directional_derivatives(
                    self.backbone, layer, h.repeat(k, *ones), y.repeat(k), v.flatten(0, 1)
                )
                t = t.view(k, len(y), *ones)  # (K·B,) -> (K, B, 1, ...): g_i·v_ik
                credits.append((t * v).mean(0))  # mean_k (g·v_k) v_k plays ∂ℓ_i/∂h_l
        return credits


def directional_derivatives(backbone, layer: int, h: Tensor, y: Tensor, v: Tensor) -> Tensor:
    """∂ℓ_i/∂h_l · v_i for every row i: the tangent of the per-sample losses, (N,).

    One forward-mode pass of the network from h_layer through the readout to the per-sample
    cross-entropy, at the point ``h`` along the tangent ``v`` (same shape).
    """

    def losses(state: Tensor) -> Tensor:
        return F.cross_entropy(backbone.forward_from(layer, state), y, reduction="none")

    with warnings.catch_warnings():
        # torch's forward AD scripts its jvp decompositions on first use, and torch 2.14
        # deprecates the scripting it does itself: not a warning about faeval's code.
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
        # Fused attention kernels have no forward-mode derivative; the math one is composite.
        with sdpa_kernel(SDPBackend.MATH):
            _, tangent = jvp(losses, (h,), (v,))
    return tangent
