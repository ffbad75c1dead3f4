"""BRSF: sign-concordant feedback with magnitudes redrawn every batch (BioTorch's ``brsf``)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from typing_extensions import override

from faeval.methods.layerwise import (
    STEP_DRAWS,
    LayerFeedbackMethod,
    xavier_magnitudes,
)
from faeval.methods.step_draws import StepDrawMethod


class BRSF(StepDrawMethod, LayerFeedbackMethod):
    """Batchwise random-magnitude sign-concordant feedback (Liao et al. 2016):
    B_k = |M_k| ∘ sign(W_k), with M_k redrawn after every update of W (every batch).

    Every linear and convolutional layer sends the error down as δx = δy·B_k
    (``LayerFeedbackMethod``). M_k is Xavier uniform, as BioTorch draws it, and the draw in
    force after t updates is the step's draw (``StepDrawMethod``: from (``feedback_seed``,
    ``STEP_DRAWS``, t), checkpointed), so a resumed run draws what an uninterrupted one would
    have and an audit measures the draw the run had reached. There is no null band: the
    training-time magnitudes are a fresh draw at every step already.

    Args:
        feedback_seed: seed of the magnitudes' draws; default the run's seed.
        *args, **kwargs: the arguments of ``CreditMethod``.
    """

    stack_refusal: ClassVar[str | None] = None  # stacks (tests/stacked/test_convert.py)

    stream = STEP_DRAWS
    seed_key = "feedback_seed"

    def __init__(self, *args, feedback_seed: int | None = None, **kwargs) -> None:
        super().__init__(*args, draw_seed=feedback_seed, **kwargs)

    def magnitudes(self) -> list[Tensor]:
        """|M_k| for every layer, the draw in force after ``updates`` updates of W (with seeds
        stacked, each seed's own draw, stacked (K, *shape))."""
        shapes = self.weight_shapes()
        draws = self.step_draws(lambda gen: [xavier_magnitudes(s, gen) for s in shapes])
        if self.seed_draws is None:
            return draws[0]
        return [torch.stack(layer) for layer in zip(*draws, strict=True)]

    @override
    def feedback_weights(self) -> list[Tensor]:
        pairs = zip(self.magnitudes(), self.weights(), strict=True)
        return [m.to(w).mul_(torch.sign(w.detach())) for m, w in pairs]  # |M_k| ∘ sign(W_k)
