"""DFA: direct feedback alignment."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor
from typing_extensions import override

from faeval.backbones import Trace
from faeval.methods.common import FeedbackMatrices, direct_credits, direct_feedback
from faeval.methods.feedback import FeedbackMethod


class DFA(FeedbackMethod):
    """Direct feedback alignment: a_l = e·B_l for l = 0..L.

    e = softmax(logits) − onehot(y) is the output error and B_l a fixed random C×|h_l|
    matrix per layer, standing in for the transposed Jacobian from h_l to the logits.
    See ``FeedbackMethod`` for the arguments.
    """

    stack_refusal: ClassVar[str | None] = None  # stacks (tests/stacked/test_convert.py)

    @override
    def draw_feedback(self, seed: int) -> FeedbackMatrices:
        """B_0..B_L, each C×|h_l|."""
        return direct_feedback(self.backbone, seed)

    @override
    def credits(self, trace: Trace, y: Tensor) -> list[Tensor]:
        return direct_credits(self.feedback, trace, y)  # e·B_l plays ∂ℓ/∂h_l
