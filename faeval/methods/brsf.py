"""BRSF: sign-concordant feedback with magnitudes redrawn every batch (BioTorch's ``brsf``)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor
from typing_extensions import override

from faeval.methods.layerwise import (
    STEP_DRAWS,
    LayerFeedbackMethod,
    xavier_magnitudes,
)
from faeval.seeding import mixed_seed, resolve_seed


class BRSF(LayerFeedbackMethod):
    """Batchwise random-magnitude sign-concordant feedback (Liao et al. 2016):
    B_k = |M_k| ∘ sign(W_k), with M_k redrawn after every update of W (every batch).

    Every linear and convolutional layer sends the error down as δx = δy·B_k
    (``LayerFeedbackMethod``). M_k is Xavier uniform, as BioTorch draws it, and the draw in
    force after t updates comes from its own generator seeded from (``feedback_seed``, t):
    a step's feedback is fixed by the seed and the count alone. Both are the method's state
    (in every checkpoint, as the module's extra state), so a resumed run draws what an
    uninterrupted one would have and an audit measures the draw the run had reached. There
    is no null band: the training-time magnitudes are a fresh draw at every step already.

    Args:
        feedback_seed: seed of the magnitudes' draws; default the run's seed.
        *args, **kwargs: the arguments of ``CreditMethod``.
    """

    stack_refusal: ClassVar[str | None] = None  # stacks (tests/stacked/test_convert.py)

    def __init__(self, *args, feedback_seed: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.feedback_seed = resolve_seed(feedback_seed)
        self.updates = 0  # t: updates of W so far
        #: With K seeds stacked (``faeval.stacked``), each seed's feedback seed; None alone.
        self.seed_feedback: list[int] | None = None

    def magnitudes(self, updates: int) -> list[Tensor]:
        """|M_k| for every layer, the draw in force after ``updates`` updates of W (with seeds
        stacked, each seed's own draw, stacked (K, *shape))."""
        if self.seed_feedback is not None:
            draws = [self.draw(seed, updates) for seed in self.seed_feedback]
            return [torch.stack(layer) for layer in zip(*draws, strict=True)]
        return self.draw(self.feedback_seed, updates)

    def draw(self, seed: int, updates: int) -> list[Tensor]:
        """|M_k| for every layer, drawn from (``seed``, ``updates``)."""
        gen = torch.Generator().manual_seed(mixed_seed(seed, STEP_DRAWS, updates))
        return [xavier_magnitudes(shape, gen) for shape in self.weight_shapes()]

    @override
    def feedback_weights(self) -> list[Tensor]:
        pairs = zip(self.magnitudes(self.updates), self.weights(), strict=True)
        return [m.to(w).mul_(torch.sign(w.detach())) for m, w in pairs]  # |M_k| ∘ sign(W_k)

    @override
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = super().training_step(batch, batch_idx)
        self.updates += 1  # W has changed: the next step draws anew
        return loss

    @override
    def get_extra_state(self) -> dict[str, Any] | list[dict[str, Any]]:
        if self.seed_feedback is not None:  # stacked: each seed's, as its lone run keeps it
            return [{"feedback_seed": s, "updates": self.updates} for s in self.seed_feedback]
        return {"feedback_seed": self.feedback_seed, "updates": self.updates}

    @override
    def set_extra_state(self, state: dict[str, Any] | list[dict[str, Any]]) -> None:
        """A lone run's state, or with seeds stacked the list of each seed's (``faeval.stacked``
        gives a stacked method the list of its seeds' extra states)."""
        if isinstance(state, list):
            self.seed_feedback = [int(s["feedback_seed"]) for s in state]
            state = state[0]
        self.feedback_seed = int(state["feedback_seed"])
        self.updates = int(state["updates"])
