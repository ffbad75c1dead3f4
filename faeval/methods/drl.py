"""DRL: DTP's targets, feedback trained by the difference reconstruction loss (Meulemans et
al. 2020)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from typing_extensions import override

from faeval.methods.target_prop import TargetPropagation, block_map, squared


class DRL(TargetPropagation):
    """DTP with the difference reconstruction loss of Meulemans et al. (2020).

    The targets are DTP's. G_l learns from a perturbation of h_{l-1} carried up to the top
    and back down: h̃_{l-1} = h_{l-1} + σξ goes forward through blocks l..L to h̃_L, comes
    down through G_L..G_{l+1} with DTP's difference correction (held fixed) to r_l, and

        L_l = ‖G_l(r_l) − G_l(h_l) − σξ‖²

    asks the last step down to give the perturbation back (their ``DTPDRLNetwork.
    compute_feedback_gradients`` and ``DTPDRLLayer.compute_feedback_gradients``, which divide
    by σ² and average over features: a constant factor the learning rate absorbs). The
    minimiser makes the difference-corrected path down invert the whole path up, which is
    what gives DTP's targets their Gauss–Newton meaning (their Theorem 3).

    Args:
        *args, **kwargs: the arguments of ``TargetPropagation`` and ``CreditMethod``.
    """

    stack_refusal: ClassVar[str | None] = None  # stacks (tests/stacked/test_convert.py)

    @override
    def feedback_loss(self, layer: int, states: list[Tensor], noise: list[Tensor]) -> Tensor:
        top = len(states) - 1
        shift = self.noise * noise[0]  # σξ at h_{l-1}
        with torch.no_grad():
            up = states[layer - 1] + shift
            for k in range(layer, top + 1):
                up = block_map(self.backbone, k, up)  # h̃_k = Φ_k(h̃_{k-1})
            down = up  # r_L = h̃_L
            for k in range(top, layer, -1):
                # r_{k-1} = h_{k-1} + G_k(r_k) − G_k(h_k)
                down = (
                    states[k - 1]
                    + self.invert(k, down, states[k - 1])
                    - self.invert(k, states[k], states[k - 1])
                )
        below = states[layer - 1]
        return squared(
            self.invert(layer, down, below) - self.invert(layer, states[layer], below) - shift
        )
