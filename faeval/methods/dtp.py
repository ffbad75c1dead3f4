"""DTP: difference target propagation (Lee, Zhang, Fischer & Bengio 2015)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor
from typing_extensions import override

from faeval.methods.target_prop import TargetPropagation, noisy_reconstruction


class DTP(TargetPropagation):
    """Difference target propagation: ĥ_{l-1} = h_{l-1} + G_l(ĥ_l) − G_l(h_l).

    The difference correction cancels G_l's reconstruction error at h_l, so the credit
    a_{l-1} = (h_{l-1} − ĥ_{l-1})/η tends to J_{G_l}(h_l)·a_l as η → 0. Each G_l learns the
    noisy reconstruction loss ‖G_l(Φ_l(h̃)) − h̃‖², h̃ = h_{l-1} + σξ (Lee et al. 2015;
    scalingDTP's ``VanillaDTP`` with ``vanilla_DTP_feedback_loss``). With G_l the exact
    inverse of Φ_l the credit is the Gauss–Newton direction (J_lᵀJ_l)⁻¹·g_l, J_l = ∂h_L/∂h_l
    (docs/methods.md).

    Args:
        *args, **kwargs: the arguments of ``TargetPropagation`` and ``CreditMethod``.
    """

    stack_refusal: ClassVar[str | None] = None  # stacks (tests/stacked/test_convert.py)

    @override
    def feedback_loss(self, layer: int, states: list[Tensor], noise: list[Tensor]) -> Tensor:
        return noisy_reconstruction(self, layer, states, noise)
