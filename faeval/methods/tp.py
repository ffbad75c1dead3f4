"""TP: target propagation through learned inverses of the blocks (Bengio 2014; Lee et al. 2015)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor
from typing_extensions import override

from faeval.methods.target_prop import TargetPropagation, noisy_reconstruction


class TP(TargetPropagation):
    """Target propagation: ĥ_{l-1} = G_l(ĥ_l), a_l = (h_l − ĥ_l)/η.

    Each G_l learns the noisy reconstruction loss ‖G_l(Φ_l(h̃)) − h̃‖², h̃ = h_{l-1} + σξ
    (scalingDTP's ``TargetProp`` trains it with ``vanilla_DTP_feedback_loss``). Without the
    difference correction a target carries G_l's reconstruction error G_l(h_l) − h_{l-1}, and
    the credit that error divided by η: the credit is only as good as the inverses are exact.

    Args:
        *args, **kwargs: the arguments of ``TargetPropagation`` and ``CreditMethod``.
    """

    stack_refusal: ClassVar[str | None] = None  # stacks (tests/stacked/test_convert.py)

    difference: ClassVar[bool] = False

    @override
    def feedback_loss(self, layer: int, states: list[Tensor], noise: list[Tensor]) -> Tensor:
        return noisy_reconstruction(self, layer, states, noise)
