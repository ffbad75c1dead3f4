"""Null calibration of Mode 2: the cosine that fresh, untrained-against feedback draws give.

A method trained with fixed random feedback B can only claim that its credit aligns with the
gradient if the training-time B does better than a fresh B drawn the same way: the network
has had no chance to adapt to the fresh one. The null band is the deep-layer cosine
cos(a_l, g_l) (mean over l = 1..L) of K fresh draws, as mean ± std.

Methods without a random feedback draw (BP and FrozenBlocks: exact credits; bridge and
energy methods: trained credit sources) have no null band: ``null_band`` returns None and the
verdict says so rather than inventing one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from faeval.backbones.base import Trace
from faeval.diagnostics.functional import mean_cosine
from faeval.errors import ConfigError
from faeval.protocol.settings import NULL_SEED
from faeval.runlog import deep_mean, mean_std


@dataclass
class NullBandFigures:
    """Per-layer and deep-layer cosines of the training-time feedback and of fresh draws.

    Attributes:
        cos: cos(a_l, g_l) per layer with the training-time feedback.
        null_mean: per layer, mean over the fresh draws.
        null_std: per layer, std over the fresh draws.
        deep: the training-time deep cosine, mean over layers 1..L (None if a layer is
            unmeasurable).
        deep_mean: mean over draws of each draw's deep cosine (None if a draw's is).
        deep_std: std over draws of each draw's deep cosine (None if a draw's is).
        draws: K, the number of fresh draws.
    """

    cos: list[float]
    null_mean: list[float]
    null_std: list[float]
    deep: float | None
    deep_mean: float | None
    deep_std: float | None
    draws: int

    def as_dict(self) -> dict:
        return asdict(self)


def has_feedback(method) -> bool:
    """Whether the method's credit comes from a fixed random draw that can be redrawn."""
    return callable(getattr(method, "draw_feedback", None)) and hasattr(method, "feedback")


def null_band(
    method, trace: Trace, grads: list[Tensor], y: Tensor, draws: int = 8, seed: int = NULL_SEED
) -> NullBandFigures | None:
    """The null band of ``method`` on a probe batch, or None when it has no feedback draw.

    The method's ``feedback`` is swapped for each fresh draw (``draw_feedback(seed + k)``)
    and restored afterwards, even on error. A draw identical to the training-time one is an
    error, never a silent member of the band.

    Args:
        method: a ``CreditMethod``.
        trace: the detached probe trace.
        grads: the true gradients g_0..g_L on the probe batch.
        y: probe labels.
        draws: K, fresh draws (>= 2 for a std).
        seed: seed of the first fresh draw.

    Raises:
        ValueError: ``draws`` < 2.
        RuntimeError: a fresh draw equals the training-time feedback.
    """
    if draws < 2:
        raise ConfigError(f"the null band needs at least 2 fresh draws, got draws={draws}")
    if not has_feedback(method):
        return None
    trained = method.feedback
    cos = [mean_cosine(a, g) for a, g in zip(method.credits(trace, y), grads, strict=True)]
    ref = trained[0]
    per_draw = []
    try:
        for k in range(draws):
            fresh = method.draw_feedback(seed + k).to(device=ref.device, dtype=ref.dtype)
            if fresh[0].shape == ref.shape and torch.equal(fresh[0], ref):
                raise RuntimeError(
                    f"fresh feedback draw {seed + k} equals the training-time feedback; pass "
                    "another null seed"
                )
            method.feedback = fresh
            credits = method.credits(trace, y)
            per_draw.append([mean_cosine(a, g) for a, g in zip(credits, grads, strict=True)])
    finally:
        method.feedback = trained
    table = torch.tensor(per_draw, dtype=torch.float64)  # (K, L+1)
    deep = [deep_mean(row) for row in per_draw]  # (K,)
    spread = mean_std(deep) if None not in deep else None
    return NullBandFigures(
        cos=cos,
        null_mean=table.mean(0).tolist(),
        null_std=table.std(0).tolist(),
        deep=deep_mean(cos),
        deep_mean=None if spread is None else spread[0],
        deep_std=None if spread is None else spread[1],
        draws=draws,
    )
