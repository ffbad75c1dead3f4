"""BRSF: sign-concordant feedback with magnitudes redrawn every batch (BioTorch's ``brsf``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from typing_extensions import override

from faeval.methods.frsf import xavier_magnitudes
from faeval.methods.layerwise import STEP_DRAWS, LayerFeedbackMethod
from faeval.seeding import mixed_seed, resolve_seed


class BRSF(LayerFeedbackMethod):
    """Batchwise random-magnitude sign-concordant feedback (Liao et al. 2016):
    B_k = |M_k| ∘ sign(W_k), with M_k redrawn after every update of W (every batch).

    Every linear and convolutional layer sends the error down as δx = δy·B_k
    (``LayerFeedbackMethod``). M_k is Xavier uniform, as BioTorch draws it, and the draw in
    force at global step t comes from its own generator seeded from (``feedback_seed``, t): a
    step's feedback is fixed by the seed and the step alone, so a resumed run draws what an
    uninterrupted one would have. Its state is the seed (in every checkpoint, as the
    module's extra state). There is no null band: the training-time magnitudes are a fresh
    draw at every step already.

    Args:
        feedback_seed: seed of the magnitudes' draws; default the run's seed.
        *args, **kwargs: the arguments of ``CreditMethod``.
    """

    def __init__(self, *args, feedback_seed: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.feedback_seed = resolve_seed(feedback_seed)

    def magnitudes(self, step: int) -> list[Tensor]:
        """|M_k| for every layer, the draw in force at global step ``step``."""
        gen = torch.Generator().manual_seed(mixed_seed(self.feedback_seed, STEP_DRAWS, step))
        return [xavier_magnitudes(shape, gen) for shape in self.weight_shapes()]

    @override
    def feedback_weights(self) -> list[Tensor]:
        weights = self.weights()
        magnitudes = self.magnitudes(self.global_step)
        return [m.to(w) * torch.sign(w.detach()) for m, w in zip(magnitudes, weights, strict=True)]

    @override
    def get_extra_state(self) -> dict[str, Any]:
        return {"feedback_seed": self.feedback_seed}

    @override
    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.feedback_seed = int(state["feedback_seed"])
