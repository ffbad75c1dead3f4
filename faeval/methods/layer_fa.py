"""LayerFA: feedback alignment layer by layer, as most papers (and BioTorch's ``fa``) mean it."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor
from typing_extensions import override

from faeval.methods.common import FeedbackMatrices
from faeval.methods.feedback import FeedbackMethod
from faeval.methods.layerwise import (
    FIXED_DRAW,
    LayerFeedbackMethod,
    xavier_uniform,
)
from faeval.seeding import mixed_seed


class LayerFA(LayerFeedbackMethod, FeedbackMethod):
    """Layer-wise feedback alignment (Lillicrap et al. 2016): a fixed random B per layer.

    Every linear and convolutional layer y = x·Wᵀ + b sends the error down as δx = δy·B_k,
    with B_k a fixed random matrix of W_k's shape drawn once as BioTorch draws it (Xavier
    uniform: U(−a, a), a = √(6 / (fan_in + fan_out))), while W_k gets δyᵀ·x; a_l is the
    gradient at h_l of this network (``LayerFeedbackMethod``). Unlike the block-level ``FA``,
    the random feedback replaces W inside the blocks too, and the readout's head sends e·B
    instead of e·W_head down to h_L.

    The matrices are buffers, drawn from ``feedback_seed`` (default: the run's seed); the
    protocol's null band redraws them. See ``FeedbackMethod`` for the arguments.
    """

    stack_refusal: ClassVar[str | None] = None  # stacks (tests/stacked/test_convert.py)

    @override
    def draw_feedback(self, seed: int) -> FeedbackMatrices:
        """B_k of W_k's shape for every layer, Xavier uniform."""
        stream = mixed_seed(seed, FIXED_DRAW)  # not the weights' own init stream
        return FeedbackMatrices(self.weight_shapes(), stream, draw=xavier_uniform)

    @override
    def feedback_weights(self) -> list[Tensor]:
        return [self.feedback[k] for k in range(len(self.feedback))]
