"""Perturbation correlation ρ: does the credit predict how the loss changes when h_l moves?

For M random unit directions δ at h_l (per sample), the true change of each sample's loss
ℓ_i(h_l + εδ) − ℓ_i(h_l), found by running the network forward from layer l, is correlated
(Pearson, over samples and directions together) with the change the credit predicts,
ε⟨a_l, δ⟩. A credit that is the gradient gives ρ ≈ 1 (first-order Taylor); a credit that
carries no information about the loss gives ρ ≈ 0. Both controls are computed on the same
directions and loss changes as the method's credit, so every ρ is calibrated on the spot.

Everything runs in float64 on a copy of the backbone: at ‖∂ℓ_i/∂h‖ ≈ 1e-4 and ε = 1e-3 the
loss changes are ~1e-8, below float32's resolution of a loss near 1.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from faeval.backbones.base import LayeredBackbone


@dataclass
class PerturbationFigures:
    """ρ per layer l = 0..L for the method's credit and its two controls.

    Attributes:
        rho: the method's credit a_l.
        positive: the positive control, a_l = g_l (expect ≈ 1).
        negative_mean: the negative control, a_l random Gaussian, mean over its draws
            (expect ≈ 0).
        negative_std: the negative control's spread over its draws.
        epsilon: step size ε.
        directions: M, directions per sample.
    """

    rho: list[float]
    positive: list[float]
    negative_mean: list[float]
    negative_std: list[float]
    epsilon: float
    directions: int

    def as_dict(self) -> dict:
        return asdict(self)


def pearson(u: Tensor, v: Tensor) -> float:
    """Pearson correlation of two equally shaped tensors over all elements, in float64.

    NaN when either is constant (no clamp: a constant prediction has no correlation).
    """
    u, v = u.flatten().double(), v.flatten().double()
    u, v = u - u.mean(), v - v.mean()
    return ((u * v).sum() / torch.sqrt((u * u).sum() * (v * v).sum())).item()


def unit_directions(
    shape: torch.Size, generator: torch.Generator, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """Random unit vectors, one per sample over its flattened state. (B, ...) like ``shape``."""
    d = torch.randn(shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
    return d / torch.linalg.vector_norm(d.flatten(1), dim=1).view(-1, *[1] * (d.dim() - 1))


@torch.no_grad()
def loss_changes(
    backbone: LayeredBackbone, layer: int, h: Tensor, y: Tensor, deltas: Tensor, epsilon: float
) -> Tensor:
    """ℓ_i(h + εδ_m,i) − ℓ_i(h) for every direction m and sample i. (M, B).

    Args:
        backbone: a float64 backbone in eval mode.
        layer: l, the layer that ``h`` is the state of.
        h: h_l in float64, (B, ...).
        y: labels, (B,).
        deltas: unit directions, (M, B, ...).
        epsilon: ε.
    """
    base = F.cross_entropy(backbone.forward_from(layer, h), y, reduction="none")  # (B,)
    return torch.stack(
        [
            F.cross_entropy(backbone.forward_from(layer, h + epsilon * d), y, reduction="none")
            - base
            for d in deltas
        ]
    )


def perturbation_correlation(
    backbone: LayeredBackbone,
    states: list[Tensor],
    y: Tensor,
    credits: list[Tensor],
    grads: list[Tensor],
    epsilon: float = 1e-3,
    directions: int = 32,
    negative_draws: int = 8,
    seed: int = 0,
) -> PerturbationFigures:
    """ρ of the credit, of the gradient (positive control) and of random credits (negative).

    Args:
        backbone: the network (left untouched: a float64 copy runs the forward passes).
        states: h_0..h_L of the probe batch.
        y: probe labels.
        credits: the method's a_0..a_L on the probe batch.
        grads: the true gradients g_0..g_L (any positive scale: ρ does not see it).
        epsilon: ε, the step along each direction.
        directions: M, random unit directions per sample.
        negative_draws: random credits drawn for the negative control.
        seed: seed of the directions and of the random credits.

    Raises:
        ValueError: ``epsilon`` is not positive, or ``directions`` or ``negative_draws`` < 1.
    """
    if epsilon <= 0 or directions < 1 or negative_draws < 1:
        raise ValueError(
            f"perturbation correlation needs epsilon > 0, directions >= 1 and "
            f"negative_draws >= 1, got {epsilon}, {directions}, {negative_draws}"
        )
    net = copy.deepcopy(backbone).double().eval()
    gen = torch.Generator().manual_seed(seed)
    y = y.to(next(net.parameters()).device)
    rho, positive, neg_mean, neg_std = [], [], [], []
    for layer, (h, a, g) in enumerate(zip(states, credits, grads, strict=True)):
        h64 = h.detach().double()
        deltas = torch.stack(
            [unit_directions(h64.shape, gen, h64.dtype, h64.device) for _ in range(directions)]
        )  # (M, B, ...)
        true = loss_changes(net, layer, h64, y, deltas, epsilon)  # (M, B)

        def predicted(c: Tensor, deltas: Tensor = deltas) -> Tensor:
            # ε⟨c_i, δ_m,i⟩ per direction and sample: c plays ∂ℓ_i/∂h_l. (M, B)
            return epsilon * (deltas * c.detach().double()).flatten(2).sum(2)

        rho.append(pearson(predicted(a), true))
        positive.append(pearson(predicted(g), true))
        negatives = [
            pearson(
                predicted(
                    torch.randn(h64.shape, generator=gen, dtype=torch.float64).to(h64.device)
                ),
                true,
            )
            for _ in range(negative_draws)
        ]
        neg = torch.tensor(negatives, dtype=torch.float64)
        neg_mean.append(neg.mean().item())
        neg_std.append(neg.std().item() if negative_draws > 1 else 0.0)
    return PerturbationFigures(rho, positive, neg_mean, neg_std, epsilon, directions)
