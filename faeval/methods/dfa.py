"""DFA: direct feedback alignment."""

from __future__ import annotations

import math

from torch import Tensor

from faeval.backbones import Trace
from faeval.methods.base import output_error
from faeval.methods.feedback import FeedbackMatrices, FeedbackMethod


class DFA(FeedbackMethod):
    """Direct feedback alignment: a_l = e·B_l for l = 0..L.

    e = softmax(logits) − onehot(y) is the output error and B_l a fixed random C×|h_l|
    matrix per layer, standing in for the transposed Jacobian from h_l to the logits.
    See ``FeedbackMethod`` for the arguments.
    """

    def draw_feedback(self, seed: int) -> FeedbackMatrices:
        """B_0..B_L, each C×|h_l|."""
        dims = [math.prod(s) for s in self.backbone.state_shapes()]
        return FeedbackMatrices([(self.backbone.num_classes, d) for d in dims], seed)

    def credits(self, trace: Trace, y: Tensor) -> list[Tensor]:
        e = output_error(trace.logits, y)
        # (B, C) @ (C, |h_l|) -> (B, |h_l|): e·B_l plays ∂ℓ/∂h_l
        return [(e @ self.feedback[l]).view_as(h) for l, h in enumerate(trace.states)]
