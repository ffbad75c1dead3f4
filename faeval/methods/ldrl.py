"""LDRL: DTP's targets, feedback trained by the layer-local difference reconstruction loss
(Ernoult et al. 2022, scalingDTP's ``DTP``)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from typing_extensions import override

from faeval.methods.target_prop import TargetPropagation, block_map, dot, squared


class LDRL(TargetPropagation):
    """DTP with the local difference reconstruction loss (L-DRL) of Ernoult et al. (2022).

    The targets are DTP's. With x = h_{l-1}, y = h_l = Φ_l(x), r = G_l(y) and two independent
    perturbations dx = σξ at x and dy = σξ' at y, G_l learns from

        L_l = −2·⟨dx, G_l(Φ_l(x + dx)) − r⟩ + ‖G_l(y + dy) − r‖²

    (scalingDTP's ``feedback_loss.get_feedback_loss``; the gradient reaches G_l through r as
    well). scalingDTP steps each G_l ``feedback_training_iterations`` times per batch before
    the forward update; here G_l takes one step per batch, in the forward update's step.

    In expectation over the noise, for small σ, L_l ≈ σ²·(‖J_G‖²_F − 2·tr(J_G·J_Φ)),
    minimised at J_G = J_Φᵀ: G_l learns the block's transposed Jacobian, and DTP's targets
    then carry backprop's gradient (a_l → ∂ℓ_i/∂h_l as η → 0).

    Args:
        *args, **kwargs: the arguments of ``TargetPropagation`` and ``CreditMethod``.
    """

    stack_refusal: ClassVar[str | None] = None  # stacks (tests/stacked/test_convert.py)

    @override
    def noise_states(self, layer: int) -> tuple[int, ...]:
        return (layer - 1, layer)  # dx at h_{l-1}, dy at h_l

    @override
    def feedback_loss(self, layer: int, states: list[Tensor], noise: list[Tensor]) -> Tensor:
        below, here = states[layer - 1], states[layer]
        dx, dy = self.noise * noise[0], self.noise * noise[1]
        with torch.no_grad():
            up = block_map(self.backbone, layer, below + dx)  # Φ_l(x + dx)
        r = self.invert(layer, here, below)  # G_l(y)
        dr = self.invert(layer, up, below) - r
        dr_y = self.invert(layer, here + dy, below) - r
        return -2 * dot(dx, dr) + squared(dr_y)
