"""Fixed random feedback matrices, registered as buffers so every checkpoint carries them."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


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
