"""Fixed random feedback matrices, registered as buffers so every checkpoint carries them."""

from __future__ import annotations

import abc
import math

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from faeval.backbones import ResMLP
from faeval.methods.base import BackboneFactory, CreditMethod


def resolve_seed(seed: int | None) -> int:
    """``seed``, or the run's seed (the one ``seed_everything`` set) when it is None."""
    return torch.initial_seed() % 2**31 if seed is None else seed


class FeedbackMatrices(nn.Module):
    """Matrices B_0..B_{n-1}, entries N(0, 1/rows), drawn once from a seeded generator.

    With 1/rows variance, v·B keeps the norm of v on average, whatever the shapes.

    Args:
        shapes: (rows, cols) of each matrix; v (B, rows) @ B (rows, cols) -> (B, cols).
        seed: seed of the draw.
    """

    def __init__(self, shapes: list[tuple[int, int]], seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.count = len(shapes)
        for i, (rows, cols) in enumerate(shapes):
            self.register_buffer(f"B{i}", torch.randn(rows, cols, generator=gen) / math.sqrt(rows))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> Tensor:
        """B_i.

        Raises:
            RuntimeError: B_i is missing. A credit never falls back to the true gradient
                (that would make every cosine read 1.0).
        """
        try:
            return self._buffers[f"B{i}"]
        except KeyError:
            raise RuntimeError(
                f"feedback matrix B{i} is missing (have {sorted(self._buffers)}); the credit "
                "cannot be computed. Load a complete faeval checkpoint or rebuild the method."
            ) from None


class FeedbackMethod(CreditMethod):
    """Base of the methods whose credits go through fixed random feedback matrices.

    The matrices are drawn once, at construction, from ``feedback_seed`` (default: the
    run's seed), and live in ``self.feedback`` as buffers: they never train, they are in
    every checkpoint, and the protocol's null band redraws them with other seeds through
    ``draw_feedback``.

    Args:
        feedback_seed: seed of the feedback draw; default the run's seed.
        input_shape, num_classes, backbone, optimizer, penalty: see ``CreditMethod``.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        backbone: BackboneFactory = ResMLP,
        optimizer: OptimizerCallable = torch.optim.Adam,
        penalty: float = 0.0,
        feedback_seed: int | None = None,
    ) -> None:
        super().__init__(input_shape, num_classes, backbone, optimizer, penalty)
        self.feedback = self.draw_feedback(resolve_seed(feedback_seed))

    @abc.abstractmethod
    def draw_feedback(self, seed: int) -> FeedbackMatrices:
        """A fresh set of feedback matrices shaped for this backbone, drawn from ``seed``."""
