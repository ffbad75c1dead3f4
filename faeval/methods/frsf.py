"""FRSF: sign-concordant feedback with fixed random magnitudes (BioTorch's ``frsf``)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from typing_extensions import override

from faeval.methods.common import FeedbackMatrices
from faeval.methods.layerwise import (
    FIXED_DRAW,
    LayerFeedbackMethod,
    xavier_magnitudes,
)
from faeval.seeding import mixed_seed, resolve_seed


class FRSF(LayerFeedbackMethod):
    """Fixed random-magnitude sign-concordant feedback (Liao et al. 2016): B_k = |M_k| ∘ sign(W_k).

    Every linear and convolutional layer sends the error down as δx = δy·B_k
    (``LayerFeedbackMethod``), with the signs of its current weights and magnitudes |M_k|
    drawn once (M_k Xavier uniform, as BioTorch draws it) and fixed: only the signs follow
    W_k as it trains. The magnitudes are buffers (``magnitudes``), drawn from
    ``feedback_seed`` (default: the run's seed). There is no null band: a fresh draw keeps
    sign(W_k), so it is no null for the alignment the signs carry.

    Args:
        feedback_seed: seed of the magnitudes' draw; default the run's seed.
        *args, **kwargs: the arguments of ``CreditMethod``.
    """

    stack_refusal: ClassVar[str | None] = None  # stacks (tests/stacked/test_convert.py)

    def __init__(self, *args, feedback_seed: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.magnitudes = FeedbackMatrices(
            self.weight_shapes(),
            mixed_seed(resolve_seed(feedback_seed), FIXED_DRAW),  # not the weights' stream
            draw=xavier_magnitudes,
        )

    @override
    def feedback_weights(self) -> list[Tensor]:
        return [self.magnitudes[k] * torch.sign(w.detach()) for k, w in enumerate(self.weights())]
