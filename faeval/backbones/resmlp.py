"""Pre-LayerNorm residual MLP, the backbone of the reference results."""

from __future__ import annotations

import math

from torch import Tensor, nn
from typing_extensions import override

from faeval.backbones.base import LayeredBackbone
from faeval.errors import ConfigError


class ResMLPBlock(nn.Module):
    """F(h) = W2·GELU(W1·LN(h)), W2 initialised N(0, w2_std²), bias 0."""

    def __init__(self, d_hidden: int, w2_std: float) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d_hidden)
        self.w1 = nn.Linear(d_hidden, d_hidden)
        self.act = nn.GELU()
        self.w2 = nn.Linear(d_hidden, d_hidden)
        nn.init.normal_(self.w2.weight, std=w2_std)
        nn.init.zeros_(self.w2.bias)

    @override
    def forward(self, h: Tensor) -> Tensor:
        return self.w2(self.act(self.w1(self.ln(h))))


class ResMLP(LayeredBackbone):
    """h_0 = W_e·flatten(x); h_l = h_{l-1} + F_l(h_{l-1}); logits = head(LN(h_L)).

    Args:
        input_shape: per-sample input shape (flattened by the embedding).
        num_classes: C.
        d_hidden: width d of the residual stream.
        num_blocks: depth L.
        residual_add: h_l = h_{l-1} + f_l when on, h_l = f_l when off.
        w2_std: init std of each block's output weight W2.
        terminal_ln: apply LayerNorm before the head.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        d_hidden: int = 256,
        num_blocks: int = 4,
        residual_add: bool = True,
        w2_std: float = 0.01,
        terminal_ln: bool = True,
    ) -> None:
        super().__init__(input_shape, num_classes)
        if d_hidden < 1 or num_blocks < 1:
            raise ConfigError(
                f"ResMLP needs d_hidden >= 1 and num_blocks >= 1, got d_hidden={d_hidden}, "
                f"num_blocks={num_blocks}"
            )
        self.residual_add = residual_add
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), d_hidden))
        self.blocks = nn.ModuleList(ResMLPBlock(d_hidden, w2_std) for _ in range(num_blocks))
        self.out_ln = nn.LayerNorm(d_hidden) if terminal_ln else nn.Identity()
        self.head = nn.Linear(d_hidden, num_classes)

    @override
    def readout(self, h: Tensor) -> Tensor:
        return self.head(self.out_ln(h))
