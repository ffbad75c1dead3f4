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

the prediction error the diagnostics compare with g_l. Learning (``update``):

- ``"relaxed"`` (inference learning as pcx, jpc and Whittington & Bogacz 2017 train it):
  every parameter takes the gradient of F at the relaxed states h*, averaged over the batch
  as the loss is: block l gets ∂F/∂θ_l = −ε_l·∂Φ_l(h*_{l-1})/∂θ_l, the embedding
  ∂/∂θ ½‖h*_0 − embed(x)‖² = −ε_0·∂embed(x)/∂θ, the readout (terminal LN and head)
  ∂ℓ(h*_L)/∂θ. It is the shared update's form, ⟨F_l(h*_{l-1}), a_l⟩ and the readout's loss,
  evaluated at h* rather than at the forward pass.
- ``"forward"``: the shared update with the same credits at the forward pass: block l gets
  ⟨F_l(h_{l-1}), −ε_l⟩ and the readout ∂ℓ(h_L)/∂θ. The embedding's update is the same
  under both (embed(x) does not depend on the states).

The output error starts the relaxation and reaches h_{L−k} after k + 1 steps: with T = 0 the
credits are zero, h* is the forward pass and the output error alone trains (the readout's
exact gradient) under either update; with T = 1, a_L = γ·∂ℓ/∂h_L and a_l = 0 below.

Fixed predictions (Millidge, Tschantz & Buckley 2022; Song et al. 2020): the predictions
Φ_l(h_{l−1}), their Jacobians and ∂ℓ/∂h_L are held at their forward values while the errors
propagate, so ε_l ← (1 − γ)·ε_l + γ·J_{Φ_{l+1}}ᵀ·ε_{l+1} and ε_L ← (1 − γ)·ε_L − γ·∂ℓ/∂h_L.
This recursion is linear and the chain of Jacobians nilpotent, so after T steps

    a_l = P(Bin(T, γ) ≥ L − l + 1) · ∂ℓ_i/∂h_l                 (closed form),

backprop's gradient at every layer times a positive factor that grows to 1 with T: the
direction is exactly backprop's once T ≥ L + 1, and at γ = 1 the credits equal backprop's
gradients (each step carries the error one layer down through the vector-Jacobian products
autograd uses). Under Adam, a positive factor per layer hardly changes the update. The
predictions being held at the forward pass, so are their parameter gradients: with fixed
predictions both updates are the forward one.
"""

from __future__ import annotations

from typing import ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from faeval.backbones import LayeredBackbone, Trace
from faeval.errors import ConfigError, TrainingDiverged
from faeval.methods.base import CreditMethod, block_penalty, local_objective
from faeval.methods.ep import running_statistics_frozen


class EnergyTerms(NamedTuple):
    """The terms of F at the states h = h(forward) + δ (``energy_terms``).

    Attributes:
        start: s, the blocks run: l = s+1..L (h_0..h_s at the forward pass when s > 0).
        states: h_0..h_L; h_s..h_L leaves of the state gradient's graph, or detached.
        outputs: the block outputs F_l(h_{l-1}), l = s+1..L.
        predictions: Φ_l(h_{l-1}), l = s+1..L.
        logits: readout(h_L), (N, C).
        losses: the per-sample losses ℓ_i(h_L), (N,).
        errors: ε_0..ε_L, detached.
        energies: Σ_i F_i over each seed's rows, detached, (K,).
    """

    start: int
    states: list[Tensor]
    outputs: list[Tensor]
    predictions: list[Tensor]
    logits: Tensor
    losses: Tensor
    errors: list[Tensor]
    energies: Tensor


class PC(CreditMethod):
    """Predictive coding: credits are the prediction errors after T relaxation steps.

    The relaxation runs a fixed number of steps with no host synchronisation inside it (one
    finiteness check at the end); it touches only the states, never the parameters or
    BatchNorm's running statistics. The energy at every step of the last relaxation is kept
    in ``energies`` (Σ_i F_i over each seed's batch: (T + 1, K), K = 1 alone) and its final
    value per sample is logged as ``train/pc_energy``.

    Args:
        steps: T, the relaxation steps.
        step_size: γ, the gradient step on the states (the energy falls monotonically while
            γ < 2/λ_max of its Hessian: ≈ 0.5 for near-identity residual blocks, as for EP;
            0.1 leaves room for blocks that grow in training).
        fixed_predictions: hold the predictions, their Jacobians and the output gradient at
            their forward values (the variant whose credits are backprop's); the update is
            then the forward one whatever ``update`` says.
        update: ``"relaxed"``, the gradient of the energy at the relaxed states (inference
            learning), or ``"forward"``, the shared update with the credits −ε_l at the
            forward pass.
        *args, **kwargs: the arguments of ``CreditMethod``.

    Raises:
        ConfigError: ``steps`` < 0, ``step_size`` <= 0 or an unknown ``update``.
        TrainingDiverged: the relaxation diverged (γ too large for the block Jacobians).
    """

    stack_refusal: ClassVar[str | None] = None  # stacks (tests/stacked/test_convert.py)

    def __init__(
        self,
        *args,
        steps: int = 20,
        step_size: float = 0.1,
        fixed_predictions: bool = False,
        update: Literal["relaxed", "forward"] = "relaxed",
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if steps < 0 or step_size <= 0:
            raise ConfigError(
                f"PC needs steps >= 0 and step_size > 0, got steps={steps}, "
                f"step_size={step_size}; set --model.steps and --model.step_size"
            )
        if update not in ("relaxed", "forward"):
            raise ConfigError(f"PC's update must be 'relaxed' or 'forward', got {update!r}")
        self.steps = steps
        self.step_size = step_size
        self.fixed_predictions = fixed_predictions
        self.update = update
        self.energies: Tensor | None = None

    @override
    def credits(self, trace: Trace, y: Tensor) -> list[Tensor]:
        if self.fixed_predictions:
            return [-e for e in self.relax_fixed(trace, y)]  # −ε_l plays ∂ℓ_i/∂h_l
        return [-e for e in self.relax(trace, y).errors]

    @override
    def update_objective(self, trace: Trace, y: Tensor, losses: Tensor) -> Tensor:
        """The batch mean of F(h*) as a function of the parameters, h* the relaxed states.

        Its gradient is ∂F/∂θ at h*, on the scale of the mean loss: the readout's loss at
        h*_L, and ⟨F_l(h*_{l-1}), −ε_l⟩ + ⟨embed(x), −ε_0⟩, whose gradients are those of
        ½‖ε_l‖² (written with the errors the relaxation kept to their own precision). The
        penalty, if any, acts on the forward pass's block outputs as for every method.
        """
        if self.update == "forward" or self.fixed_predictions:
            return super().update_objective(trace, y, losses)
        # h*, ε at h* (detached) and the block outputs and losses at h*, connected to the
        # parameters: the relaxation's last pass, which evaluates F at h* anyway.
        relaxed = self.relax(trace.detached(), y, graph=True)
        objective = self.batch_mean(relaxed.losses)  # mean ℓ(h*_L)
        if self.penalty:
            objective = objective + self.penalty * block_penalty(trace.outputs, self.stack_size)
        # h_0 = embed(x) with its graph: ⟨embed(x), −ε_0⟩ gives ∂/∂θ ½‖h*_0 − embed(x)‖².
        at_rest = Trace([trace.states[0], *relaxed.states[1:]], relaxed.outputs, relaxed.logits)
        return objective + local_objective(at_rest, [-e for e in relaxed.errors], self.stack_size)

    def relax(self, trace: Trace, y: Tensor, graph: bool = False) -> EnergyTerms:
        """T gradient steps on F from the forward pass.

        The relaxation moves the displacements δ_l = h_l − h_l(forward) rather than the
        states, so that the errors keep their own precision: a confidently classified sample's
        credit would otherwise round to exactly 0. Each step is one pass through the blocks and
        the readout (``energy_terms``) and one vector-Jacobian product through all of them at
        once (``state_gradient``). Step k (from 0) leaves out the blocks below h_{L−k}, which
        the output error has not reached: their errors are exactly 0 there.

        Args:
            trace: the forward pass, detached.
            y: the labels.
            graph: connect the last pass, at h*, to the parameters (the update's objective).

        Returns:
            F's terms at the relaxed states h*.

        Raises:
            TrainingDiverged: the energy is not finite after the T steps.
        """
        backbone, gamma, seeds = self.backbone, self.step_size, self.stack_size
        forward = [h.detach() for h in trace.states]  # h_0 = embed(x): all F needs of x
        shifts = [torch.zeros_like(h) for h in forward]
        energies = []
        depth = len(forward) - 1  # L
        with running_statistics_frozen(backbone):
            for step in range(self.steps):
                # δ_l = 0 for l <= L − step: the output error reaches h_{L−k} after k + 1 steps
                start = max(depth - step, 0)
                with torch.enable_grad():
                    terms = energy_terms(
                        backbone, forward, shifts, y, seeds, at_states=True, start=start
                    )
                    grads = state_gradient(terms)  # ∇F at h_s..h_L
                energies.append(terms.energies)
                moved = zip(shifts[start:], grads, strict=True)
                shifts = shifts[:start] + [d - gamma * g for d, g in moved]
            # the update needs every block's output at h*
            start = 0 if graph else max(depth - self.steps, 0)
            with torch.set_grad_enabled(graph):
                terms = energy_terms(backbone, forward, shifts, y, seeds, start=start)
            energies.append(terms.energies)
        self.energies = torch.stack(energies)  # (T + 1, K)
        finite = torch.isfinite(self.energies[-1])
        if not finite.all():  # the one host sync of the relaxation
            where = f" (seeds {(~finite).nonzero().flatten().tolist()} of the stack)"
            raise TrainingDiverged(
                f"PC's relaxation diverged within {self.steps} steps of size {gamma}"
                f"{where if seeds > 1 else ''} (non-finite energy); lower --model.step_size."
            )
        self.accumulate("train/pc_energy", self.energies[-1] / (len(y) // seeds))
        return terms

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
            for step in range(self.steps):
                # ε_l = 0 for l <= L − step, where the output error has not reached yet
                start = max(len(inputs) - step, 0)
                back = ()  # J_{Φ_{l+1}}ᵀ·ε_{l+1} for l = start..L−1, all layers at once
                if start < len(inputs):
                    back = torch.autograd.grad(
                        predictions[start:], inputs[start:], errors[start + 1 :], retain_graph=True
                    )
                moved = zip(errors[start:-1], back, strict=True)
                errors = [
                    *errors[:start],
                    *((1 - gamma) * e + gamma * b for e, b in moved),
                    (1 - gamma) * errors[-1] - gamma * output_grad,
                ]
        return [e.detach() for e in errors]


def energy_terms(
    backbone: LayeredBackbone,
    forward: list[Tensor],
    shifts: list[Tensor],
    y: Tensor,
    seeds: int = 1,
    at_states: bool = False,
    start: int = 0,
) -> EnergyTerms:
    """F's terms at h + δ, ``forward`` the forward pass h (h_l = Φ_l(h_{l-1}), h_0 = embed(x)).

    The errors are ε_0 = δ_0 and ε_l = δ_l − (Φ_l(h_{l-1} + δ_{l-1}) − h_l): the forward pass
    cancels exactly, so an error far below the states' rounding step survives (EP's
    ``prediction_errors`` with shifts). Formed as (h + δ) − Φ(…), it would be lost once δ is
    under half a unit in the last place of h (float32: ~1e-7·‖h‖ per entry).

    Args:
        backbone: the network.
        forward: h_0..h_L of the forward pass, detached.
        shifts: δ_0..δ_L, detached.
        y: the labels.
        seeds: K, the seeds stacked seed-major (``seed_energies``).
        at_states: make the states h + δ leaves that require grad (``state_gradient``).
        start: s where δ_0..δ_s are 0 (s > 0): the blocks 1..s, whose inputs and outputs
            sit at the forward pass, are not run and their errors are 0, as recomputing
            them gives (exactly: the same kernels on the same inputs).
    """
    pairs = zip(forward[start:], shifts[start:], strict=True)
    states = forward[:start] + [(h + d).requires_grad_(at_states) for h, d in pairs]
    below = states[start:-1]  # the inputs h_s..h_{L−1} of the blocks run
    outputs = [block(h) for block, h in zip(backbone.blocks[start:], below, strict=True)]
    predictions = [backbone.combine(h, f) for h, f in zip(below, outputs, strict=True)]
    logits = backbone.readout(states[-1])  # (N, C)
    losses = F.cross_entropy(logits, y, reduction="none")  # ℓ_i, (N,)
    with torch.no_grad():
        moved = zip(shifts[start + 1 :], predictions, forward[start + 1 :], strict=True)
        # ε_l = δ_l = 0 for l <= s (s > 0), and ε_0 = δ_0
        errors = shifts[: start + 1] + [d - (p - h) for d, p, h in moved]
        energies = seed_energies(errors[start:], losses, seeds)  # leaving out terms of 0
    return EnergyTerms(start, states, outputs, predictions, logits, losses, errors, energies)


def state_gradient(terms: EnergyTerms) -> list[Tensor]:
    """∇_h Σ_i F_i at h_s..h_L, the states of ``terms`` (built with ``at_states``), per sample.

    ∇_{h_l} F = ε_l − J_{Φ_{l+1}}(h_l)ᵀ·ε_{l+1} (l < L) and ∇_{h_L} F = ε_L + ∂ℓ_i/∂h_L: one
    vector-Jacobian product through every block run and the readout at once, each sum formed
    as autograd forms it on F itself (the same two terms, rounded alike). Below h_s it is 0.
    Each sample's row is its own gradient, so K stacked seeds' sum leaves each seed its own.
    """
    start, errors = terms.start, terms.errors
    *back, top = torch.autograd.grad(
        [*terms.predictions, terms.losses.sum()], terms.states[start:], [*errors[start + 1 :], None]
    )  # J_{Φ_{l+1}}ᵀ·ε_{l+1}, l = s..L−1, and ∂ℓ_i/∂h_L
    return [*(e - b for e, b in zip(errors[start:-1], back, strict=True)), errors[-1] + top]


def seed_energies(errors: list[Tensor], losses: Tensor, seeds: int = 1) -> Tensor:
    """Σ_i F_i = Σ_i [½·Σ_l ‖ε_l‖² + ℓ_i(h_L)] over each seed's rows: (K·B, ...) -> (K,).

    EP's ``layered_energy`` at β = 1 from the errors and the per-sample losses ℓ_i, kept per
    seed (``seeds`` = K stacked seed-major), so that each seed's energy is the one its lone
    run sums.
    """
    squares = sum(e.pow(2).reshape(seeds, -1).sum(1) for e in errors)  # Σ_l ‖ε_l‖², (K,)
    return squares / 2 + losses.reshape(seeds, -1).sum(1)
