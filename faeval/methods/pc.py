"""PC: predictive coding (inference learning) on the layered backbone.

The energy is EP's at β = 1 (``faeval.methods.ep``): for states h = (h_0..h_L) of an input x
with label y,

    F(h) = ½‖h_0 − embed(x)‖² + Σ_{l=1..L} ½‖h_l − Φ_l(h_{l-1})‖² + ℓ(h_L),

Φ_l the block map with its residual add, ℓ the cross-entropy of readout(h_L), and
ε_0 = h_0 − embed(x), ε_l = h_l − Φ_l(h_{l-1}) the prediction errors. Inference starts from
the forward pass (every ε_l = 0) and relaxes h_0..h_L by T gradient steps
h ← h − γ·∇_h F(h), where ∇_{h_l} F = ε_l − J_{Φ_{l+1}}(h_l)ᵀ·ε_{l+1} (l < L) and
∇_{h_L} F = ε_L + ∂ℓ/∂h_L. The credit is

    a_l = −ε_l at the end of the relaxation,

and learning is the shared local update with it (each block's weights get ⟨f_l, −ε_l⟩, PC's
update −ε_lᵀ·∂Φ_l/∂θ evaluated at the forward pass). The output error starts the relaxation
and reaches h_{L−k} after k + 1 steps: with T = 0 the credits are zero and the output error
alone trains (the readout's exact gradient); with T = 1, a_L = γ·∂ℓ/∂h_L and a_l = 0 below.

Fixed predictions (Millidge, Tschantz & Buckley 2022; Song et al. 2020): the predictions
Φ_l(h_{l−1}), their Jacobians and ∂ℓ/∂h_L are held at their forward values while the errors
propagate, so ε_l ← (1 − γ)·ε_l + γ·J_{Φ_{l+1}}ᵀ·ε_{l+1} and ε_L ← (1 − γ)·ε_L − γ·∂ℓ/∂h_L.
This recursion is linear and the chain of Jacobians nilpotent, so after T steps

    a_l = P(Bin(T, γ) ≥ L − l + 1) · ∂ℓ_i/∂h_l                 (closed form),

backprop's gradient at every layer times a positive factor that grows to 1 with T: the
direction is exactly backprop's once T ≥ L + 1, and at γ = 1 the credits equal backprop's
gradients (each step carries the error one layer down through the vector-Jacobian products
autograd uses). Under Adam, a positive factor per layer hardly changes the update.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from faeval.backbones import Trace
from faeval.errors import ConfigError, TrainingDiverged
from faeval.methods.base import CreditMethod
from faeval.methods.ep import layered_energy, prediction_errors, running_statistics_frozen


class PC(CreditMethod):
    """Predictive coding: credits are the prediction errors after T relaxation steps.

    The relaxation runs a fixed number of steps with no host synchronisation inside it (one
    finiteness check at the end); it touches only the states, never the parameters or
    BatchNorm's running statistics. The energy at every step of the last relaxation is kept
    in ``energies`` (Σ_i F_i, T + 1 values) and its final value per sample is logged as
    ``train/pc_energy``.

    Args:
        steps: T, the relaxation steps.
        step_size: γ, the gradient step on the states (the energy falls monotonically while
            γ < 2/λ_max of its Hessian: ≈ 0.5 for near-identity residual blocks, as for EP;
            0.1 leaves room for blocks that grow in training).
        fixed_predictions: hold the predictions, their Jacobians and the output gradient at
            their forward values (the variant whose credits are backprop's).
        *args, **kwargs: the arguments of ``CreditMethod``.

    Raises:
        ConfigError: ``steps`` < 0 or ``step_size`` <= 0.
        TrainingDiverged: the relaxation diverged (γ too large for the block Jacobians).
    """

    def __init__(
        self,
        *args,
        steps: int = 20,
        step_size: float = 0.1,
        fixed_predictions: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if steps < 0 or step_size <= 0:
            raise ConfigError(
                f"PC needs steps >= 0 and step_size > 0, got steps={steps}, "
                f"step_size={step_size}; set --model.steps and --model.step_size"
            )
        self.steps = steps
        self.step_size = step_size
        self.fixed_predictions = fixed_predictions
        self.energies: Tensor | None = None

    @override
    def credits(self, trace: Trace, y: Tensor) -> list[Tensor]:
        relax = self.relax_fixed if self.fixed_predictions else self.relax
        return [-e for e in relax(trace, y)]  # −ε_l plays ∂ℓ_i/∂h_l

    def relax(self, trace: Trace, y: Tensor) -> list[Tensor]:
        """T gradient steps on F from the forward pass; the final errors ε_0..ε_L, detached.

        The relaxation moves the displacements δ_l = h_l − h_l(forward) rather than the
        states, so that the errors keep their own precision (``prediction_errors`` with
        shifts): a confidently classified sample's credit would otherwise round to exactly 0.
        """
        backbone, gamma = self.backbone, self.step_size
        forward = [h.detach() for h in trace.states]  # h_0 = embed(x): all F needs of x
        shifts = [torch.zeros_like(h) for h in forward]
        energies = []
        with torch.enable_grad(), running_statistics_frozen(backbone):
            for step in range(self.steps + 1):
                for d in shifts:
                    d.requires_grad_(True)
                errors = prediction_errors(backbone, forward[0], forward, shifts)
                top = forward[-1] + shifts[-1]
                energy = layered_energy(backbone, errors, top, y, beta=1.0)  # Σ_i F_i
                energies.append(energy.detach())
                if step == self.steps:
                    break
                grads = torch.autograd.grad(energy, shifts)  # ∇_h F, h = forward + δ
                shifts = [(d - gamma * g).detach() for d, g in zip(shifts, grads, strict=True)]
        self.energies = torch.stack(energies)
        if not torch.isfinite(self.energies[-1]):  # the one host sync of the relaxation
            raise TrainingDiverged(
                f"PC's relaxation diverged within {self.steps} steps of size {gamma} "
                "(non-finite energy); lower --model.step_size."
            )
        self.accumulate("train/pc_energy", self.energies[-1] / len(y))
        return [e.detach() for e in errors]

    def relax_fixed(self, trace: Trace, y: Tensor) -> list[Tensor]:
        """T steps of the fixed-prediction errors; the final errors ε_0..ε_L, detached."""
        backbone, gamma = self.backbone, self.step_size
        with torch.enable_grad(), running_statistics_frozen(backbone):
            inputs = [h.detach().requires_grad_(True) for h in trace.states[:-1]]
            # Φ_l(h_{l-1}) at the forward pass, l = 1..L: the held predictions and Jacobians.
            predictions = [
                backbone.combine(h, block(h))
                for block, h in zip(backbone.blocks, inputs, strict=True)
            ]
            top = trace.states[-1].detach().requires_grad_(True)
            loss = F.cross_entropy(backbone.readout(top), y, reduction="sum")
            (output_grad,) = torch.autograd.grad(loss, top)  # ∂ℓ_i/∂h_L at the forward pass
            errors = [torch.zeros_like(h) for h in trace.states]
            for _ in range(self.steps):
                # J_{Φ_{l+1}}ᵀ·ε_{l+1} for l = 0..L−1, all layers at once from the same ε.
                back = torch.autograd.grad(predictions, inputs, errors[1:], retain_graph=True)
                errors = [
                    *((1 - gamma) * e + gamma * b for e, b in zip(errors[:-1], back, strict=True)),
                    (1 - gamma) * errors[-1] - gamma * output_grad,
                ]
        return [e.detach() for e in errors]
