"""FA: feedback alignment on the residual network (block level)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor
from typing_extensions import override

from faeval.backbones import Trace
from faeval.methods.common import FeedbackMatrices, output_error, state_sizes
from faeval.methods.feedback import FeedbackMethod


class FA(FeedbackMethod):
    """Feedback alignment: credits travel down the network through fixed random matrices.

    a_L = e·B_top with B_top a fixed random C×|h_L| matrix (in place of the readout's
    transposed Jacobian); going down, a_{l-1} = a_l + a_l·B_l, with B_l a fixed random
    |h_l|×|h_{l-1}| matrix standing in for the block branch's transposed Jacobian
    (a_{l-1} = a_l·B_l when the residual add is off). The identity path is exact, so deep
    credits inherit the top credit's alignment.

    See ``FeedbackMethod`` for the arguments.
    """

    stack_refusal: ClassVar[str | None] = None  # stacks (tests/stacked/test_convert.py)

    @override
    def draw_feedback(self, seed: int) -> FeedbackMatrices:
        """A fresh set: B_0 is C×|h_L| (top), B_l is |h_l|×|h_{l-1}| for l = 1..L."""
        dims = state_sizes(self.backbone)
        shapes = [(self.backbone.num_classes, dims[-1])]
        shapes += [(dims[l], dims[l - 1]) for l in range(1, len(dims))]
        return FeedbackMatrices(shapes, seed)

    @override
    def credits(self, trace: Trace, y: Tensor) -> list[Tensor]:
        states = trace.states
        # (B, C) @ (C, |h_L|) -> (B, |h_L|)
        a = self.feedback.project(0, output_error(trace.logits, y))
        credits = [a]
        for l in range(len(states) - 1, 0, -1):
            # (B, |h_l|) @ (|h_l|, |h_{l-1}|): B_l plays J_{F_l}ᵀ
            back = self.feedback.project(l, a)
            a = a + back if self.backbone.residual_add else back
            credits.append(a)
        return [c.view_as(h) for c, h in zip(reversed(credits), states, strict=True)]
