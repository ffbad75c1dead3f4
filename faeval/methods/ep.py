"""EP: equilibrium propagation on the layered backbone, the free state being the forward pass.

The energy of states h = (h_0..h_L) for an input x with label y (docs/methods.md):

    E(h; β) = ½‖h_0 − embed(x)‖² + Σ_{l=1..L} ½‖h_l − Φ_l(h_{l-1})‖² + β·ℓ(h_L),

with Φ_l(h) = combine(h, F_l(h)) the block map with its residual add and ℓ(h_L) the
cross-entropy of readout(h_L). At β = 0 the forward pass h_l = Φ_l(h_{l-1}) is the minimum
(E = 0): it is the free state. The nudged phase starts there and relaxes h_0..h_L by K
gradient steps h ← h − γ·∇_h E(h; β).

Writing ε_0 = h_0 − embed(x) and ε_l = h_l − Φ_l(h_{l-1}) for the prediction errors, the
nudged equilibrium satisfies ε_L = −β·∂ℓ/∂h_L and ε_l = J_{Φ_{l+1}}(h_l)ᵀ·ε_{l+1}: the errors
are −β times backprop's chain at the nudged state. The credit is therefore

    a_l = −ε_l / β                                   (``credit="error"``),

which tends to ∂ℓ_i/∂h_l as β → 0 with an O(β) bias; the symmetric estimate
a_l = −(ε_l^{+β} − ε_l^{−β}) / (2β) removes the first-order term. The seed study's credit, the
state displacement a_l = −(h_l^β − h_l^0)/β (``credit="displacement"``, or
−(h_l^{+β} − h_l^{−β})/(2β) symmetric), matches ∂ℓ/∂h_l only while the blocks stay near the
identity.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from faeval.backbones import LayeredBackbone, Trace
from faeval.errors import ConfigError, TrainingDiverged
from faeval.methods.base import CreditMethod


class EP(CreditMethod):
    """Equilibrium propagation: credits from the prediction errors of a nudged relaxation.

    The relaxation stops early once the energy gradient's norm (over the whole batch) falls
    below ``tol`` times its norm at the free state; the number of steps taken is logged as
    ``train/ep_steps`` (the larger of the two phases when symmetric). It touches only the
    states: the backbone's parameters get no gradient from it and BatchNorm's running
    statistics are left as they were. With ``steps=0`` there is no relaxation and the
    credits are zero.

    The stop is decided on the device: a batch whose norm has fallen below the tolerance is
    held where it is (with seeds stacked, each seed's batch on its own), and the host looks
    at the flags only every ``check_every`` steps to end the loop once every batch has
    stopped. The credits are therefore the same whatever ``check_every`` is; a larger one
    waits on the device less often and may compute up to ``check_every`` − 1 steps in vain.

    Args:
        beta: the nudging strength β > 0.
        steps: K, the most relaxation steps per phase.
        step_size: γ, the gradient step on the states (stable below ~2/‖D‖², D the map from
            states to prediction errors: ≈ 0.5 for near-identity residual blocks at init;
            the default 0.2 leaves room for blocks that grow in training, where 0.5 made the
            relaxation oscillate and the deep cosines turn negative within 20 steps of
            Fashion-MNIST training).
        tol: relative tolerance of the early stop (0 never stops early).
        symmetric: nudge with +β and −β and take the centred difference.
        credit: ``"error"`` for −ε_l/β, ``"displacement"`` for −(h_l^β − h_l^0)/β.
        check_every: look at the stop flags on the host every n steps; default 1 on the CPU
            (nothing to wait for) and 8 on an accelerator.
        *args, **kwargs: the arguments of ``CreditMethod``.

    Raises:
        FloatingPointError: the relaxation diverged (γ too large for the block Jacobians).
    """

    stack_refusal: ClassVar[str | None] = None  # stacks (tests/stacked/test_convert.py)

    def __init__(
        self,
        *args,
        beta: float = 0.1,
        steps: int = 50,
        step_size: float = 0.2,
        tol: float = 1e-3,
        symmetric: bool = False,
        credit: Literal["error", "displacement"] = "error",
        check_every: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if beta <= 0 or steps < 0 or step_size <= 0 or tol < 0 or (check_every or 1) < 1:
            raise ConfigError(
                f"EP needs beta > 0, steps >= 0, step_size > 0, tol >= 0 and check_every >= 1, "
                f"got beta={beta}, steps={steps}, step_size={step_size}, tol={tol}, "
                f"check_every={check_every}"
            )
        if credit not in ("error", "displacement"):
            raise ConfigError(f"credit must be 'error' or 'displacement', got {credit!r}")
        self.beta = beta
        self.steps = steps
        self.step_size = step_size
        self.tol = tol
        self.symmetric = symmetric
        self.credit = credit
        self.check_every = check_every
        self.steps_taken = torch.zeros(1)  # of the last relaxation, per seed

    @override
    def credits(self, trace: Trace, y: Tensor) -> list[Tensor]:
        if self.steps == 0:
            self._took(torch.zeros(self.stack_size, device=y.device))
            return [torch.zeros_like(h) for h in trace.states]
        plus, n_plus = self.relax(trace, y, self.beta)
        if self.symmetric:
            minus, n_minus = self.relax(trace, y, -self.beta)
            self._took(torch.maximum(n_plus, n_minus))
            # −(ε^{+β} − ε^{−β})/(2β) (or of the states) plays ∂ℓ_i/∂h_l, bias O(β²).
            return [-(p - m) / (2 * self.beta) for p, m in zip(plus, minus, strict=True)]
        self._took(n_plus)
        if self.credit == "error":
            return [-p / self.beta for p in plus]  # −ε_l/β plays ∂ℓ_i/∂h_l, bias O(β)
        return [-(p - h) / self.beta for p, h in zip(plus, trace.states, strict=True)]

    def relax(self, trace: Trace, y: Tensor, beta: float) -> tuple[list[Tensor], Tensor]:
        """Relaxes the states from the free state under nudging ``beta``.

        Returns:
            The prediction errors ε_0..ε_L at the final state (``credit="error"``) or the
            final states h_0..h_L (``credit="displacement"``), detached, and the number of
            gradient steps taken, per seed (K,).

        Raises:
            TrainingDiverged: the relaxation diverged (non-finite energy gradient).
        """
        backbone = self.backbone
        anchor = trace.states[0]  # embed(x): the free state's h_0, all EP needs of x
        states = [h.clone() for h in trace.states]
        seeds = self.stack_size
        rows = len(y) // seeds
        check_every = self.check_every or (1 if y.device.type == "cpu" else 8)
        stopped = torch.zeros(seeds, dtype=torch.bool, device=y.device)
        diverged = torch.zeros_like(stopped)
        taken = torch.zeros(seeds, device=y.device)
        first_norm = None
        with torch.enable_grad(), running_statistics_frozen(backbone):
            for k in range(self.steps + 1):
                for h in states:
                    h.requires_grad_(True)
                errors = prediction_errors(backbone, anchor, states)
                if k == self.steps:
                    break
                energy = layered_energy(backbone, errors, states[-1], y, beta)  # Σ_i E_i
                grads = torch.autograd.grad(energy, states)
                # ‖∇_h E‖ over each seed's batch: (K·B, ...) -> (K,)
                norm = torch.sqrt(sum(g.reshape(seeds, -1).pow(2).sum(1) for g in grads))
                diverged |= ~torch.isfinite(norm) & ~stopped
                first_norm = norm if first_norm is None else first_norm
                stopped |= norm <= self.tol * first_norm
                if (k + 1) % check_every == 0 and self._relaxation_over(stopped, diverged, k + 1):
                    break
                hold = stopped.repeat_interleave(rows)  # (K·B,): rows whose batch has stopped
                states = [
                    torch.where(
                        hold.view(-1, *[1] * (h.dim() - 1)), h, h - self.step_size * g
                    ).detach()
                    for h, g in zip(states, grads, strict=True)
                ]
                taken += ~stopped
        self._relaxation_over(stopped, diverged, k)
        out = errors if self.credit == "error" else states
        return [t.detach() for t in out], taken

    def _relaxation_over(self, stopped: Tensor, diverged: Tensor, steps: int) -> bool:
        """The host's look at the flags: raises on divergence, True once every batch stopped."""
        if diverged.any():
            seeds = diverged.nonzero().flatten().tolist()
            where = f" (seeds {seeds} of the stack)" if self.stack_size > 1 else ""
            raise TrainingDiverged(
                f"EP's relaxation diverged within {steps} steps of size {self.step_size}{where} "
                "(non-finite energy gradient); lower --model.step_size."
            )
        return bool(stopped.all())

    def _took(self, steps: Tensor) -> None:
        """Keeps the last relaxation's step count and adds it to ``train/ep_steps``."""
        self.steps_taken = steps
        self.accumulate("train/ep_steps", steps)


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@contextlib.contextmanager
def running_statistics_frozen(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers in training mode normalise by batch statistics without updating their
    running ones (nor touching those buffers in place, which the step's graph has saved)."""
    norms = [
        m
        for m in module.modules()
        if isinstance(m, BATCH_NORMS) and m.training and m.track_running_stats
    ]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


def layered_energy(
    backbone: LayeredBackbone, errors: list[Tensor], top: Tensor, y: Tensor, beta: float
) -> Tensor:
    """Σ_i E_i(h; β) = Σ_i [½·Σ_l ‖ε_l‖² + β·ℓ_i(h_L)], the energy summed over the batch.

    Args:
        backbone: the network (its readout gives ℓ from h_L).
        errors: the prediction errors ε_0..ε_L at the states (``prediction_errors``).
        top: the state h_L.
        y: labels.
        beta: β, the weight of the output loss.
    """
    loss = F.cross_entropy(backbone.readout(top), y, reduction="sum")  # Σ_i ℓ_i
    return sum(e.pow(2).sum() for e in errors) / 2 + beta * loss


def prediction_errors(
    backbone: LayeredBackbone,
    anchor: Tensor,
    states: list[Tensor],
    shifts: list[Tensor] | None = None,
) -> list[Tensor]:
    """ε_0 = h_0 − anchor and ε_l = h_l − Φ_l(h_{l-1}) for l = 1..L, each shaped like h_l.

    With ``shifts`` δ, ``states`` must be the forward pass (h_l = Φ_l(h_{l-1}), h_0 = anchor)
    and the errors are those at the states h + δ, computed as ε_0 = δ_0 and
    ε_l = δ_l − (Φ_l(h_{l-1} + δ_{l-1}) − h_l): the forward pass cancels exactly, so an error
    far below the states' rounding step survives. Formed as (h + δ) − Φ(…), it is lost once
    δ is under half a unit in the last place of h (float32: ~1e-7·‖h‖ per entry), which is
    where a confidently classified sample's nudge lies.
    """
    if shifts is None:
        errors = [states[0] - anchor]
        for block, h_prev, h in zip(backbone.blocks, states[:-1], states[1:], strict=True):
            errors.append(h - backbone.combine(h_prev, block(h_prev)))
        return errors
    errors = [shifts[0]]
    for block, h_prev, h, d_prev, d in zip(
        backbone.blocks, states[:-1], states[1:], shifts[:-1], shifts[1:], strict=True
    ):
        moved = h_prev + d_prev
        errors.append(d - (backbone.combine(moved, block(moved)) - h))
    return errors
