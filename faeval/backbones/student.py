"""StudentNet: the plain MLP trained on the synthetic nonlinearity ladder."""

from __future__ import annotations

import math

from torch import Tensor, nn
from typing_extensions import override

from faeval.backbones.base import LayeredBackbone
from faeval.errors import ConfigError
from faeval.ladder import ladder_activation


def _teacher_init(linear: nn.Linear) -> nn.Linear:
    """Weights N(0, 1/fan_in) (the teacher's scale) and zero bias."""
    nn.init.normal_(linear.weight, std=1 / math.sqrt(linear.in_features))
    nn.init.zeros_(linear.bias)
    return linear


class LadderBlock(nn.Module):
    """F(h) = W·φ_α(h) + b: the ladder's nonlinearity, then a linear layer."""

    def __init__(self, width: int, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha
        self.linear = _teacher_init(nn.Linear(width, width))

    @override
    def forward(self, h: Tensor) -> Tensor:
        return self.linear(ladder_activation(h, self.alpha))  # (B, w) -> (B, w)


class StudentNet(LayeredBackbone):
    """h_0 = W_0·x + b_0; h_l = W_l·φ_α(h_{l-1}) + b_l for l = 1..depth−1; logits = head(h_L).

    The states are pre-activations, φ_α(z) = (1 − α)·z + α·tanh(z) is the teacher's own
    nonlinearity (``faeval.ladder.ladder_activation``), and there is no residual add
    and no terminal normalisation. A ``SyntheticLadder`` teacher with the same ``depth``,
    ``alpha`` and a width no larger than ``width`` applies depth − 1 nonlinearities between
    depth linear maps; the student applies the same number, so the teacher is exactly one
    of the students (the head composed with the last block plays the teacher's last layer):
    the ladder's difficulty is in the credit assignment, not in the capacity. Weights start
    N(0, 1/fan_in), as the teacher's.

    Args:
        input_shape: per-sample input shape (flattened by the embedding).
        num_classes: C.
        width: hidden width (match the ladder's ``width``).
        depth: the ladder's ``depth``; the student has depth − 1 blocks (>= 1).
        alpha: nonlinearity of φ_α, 0 (linear) to 1 (tanh); match the ladder's ``alpha``.

    Raises:
        ValueError: depth < 2 (no block to assign credit to), width < 1, or alpha outside
            [0, 1].
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        width: int = 128,
        depth: int = 2,
        alpha: float = 1.0,
    ) -> None:
        super().__init__(input_shape, num_classes)
        if depth < 2 or width < 1:
            raise ConfigError(
                f"StudentNet needs depth >= 2 (depth − 1 blocks) and width >= 1, got "
                f"depth={depth}, width={width}; pass --model.backbone.depth 2 or more (and the "
                "same --data.depth)"
            )
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"StudentNet's alpha must lie in [0, 1], got {alpha}")
        self.residual_add = False
        self.alpha = alpha
        self.embed = nn.Sequential(
            nn.Flatten(), _teacher_init(nn.Linear(math.prod(input_shape), width))
        )
        self.blocks = nn.ModuleList(LadderBlock(width, alpha) for _ in range(depth - 1))
        self.head = _teacher_init(nn.Linear(width, num_classes))

    @override
    def readout(self, h: Tensor) -> Tensor:
        return self.head(h)  # (B, w) -> (B, C)
