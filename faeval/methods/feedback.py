"""The base of methods whose credits go through fixed random feedback matrices."""

from __future__ import annotations

import abc

from faeval.methods.base import CreditMethod
from faeval.methods.common import FeedbackMatrices
from faeval.seeding import resolve_seed


class FeedbackMethod(CreditMethod):
    """Base of the methods whose credits go through fixed random feedback matrices.

    The matrices are drawn once, at construction, from ``feedback_seed`` (default: the
    run's seed), and live in ``self.feedback`` as buffers: they never train, they are in
    every checkpoint, and the protocol's null band redraws them with other seeds through
    ``draw_feedback``.

    Args:
        feedback_seed: seed of the feedback draw; default the run's seed.
        *args, **kwargs: the arguments of ``CreditMethod`` (``input_shape``,
            ``num_classes``, ``backbone``, ``optimizer``, ``penalty``).
    """

    def __init__(self, *args, feedback_seed: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.feedback = self.draw_feedback(resolve_seed(feedback_seed))

    @abc.abstractmethod
    def draw_feedback(self, seed: int) -> FeedbackMatrices:
        """A fresh set of feedback matrices shaped for this backbone, drawn from ``seed``."""
