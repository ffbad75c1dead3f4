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

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from faeval.backbones.base import Trace
from faeval.diagnostics.functional import mean_cosine

#: Seeds of the fresh draws start here, far from the small seeds runs are given.
NULL_SEED = 1_000_003


@dataclass
class NullBand:
    """Per-layer and deep-layer cosines of the training-time feedback and of fresh draws.

    Attributes:
        cos: cos(a_l, g_l) per layer with the training-time feedback.
        null_mean: per layer, mean over the fresh draws.
        null_std: per layer, std over the fresh draws.
        deep: the training-time deep cosine, mean over layers 1..L.
        deep_mean: mean over draws of each draw's deep cosine.
        deep_std: std over draws of each draw's deep cosine.
        draws: K, the number of fresh draws.
    """

    cos: list[float]
    null_mean: list[float]
    null_std: list[float]
    deep: float
    deep_mean: float
    deep_std: float
    draws: int

    def as_dict(self) -> dict:
        return asdict(self)


def has_feedback(method) -> bool:
    """Whether the method's credit comes from a fixed random draw that can be redrawn."""
    return callable(getattr(method, "draw_feedback", None)) and hasattr(method, "feedback")


def _deep(values: list[float]) -> float:
    return sum(values[1:]) / (len(values) - 1) if len(values) > 1 else math.nan


def null_band(
    method, trace: Trace, grads: list[Tensor], y: Tensor, draws: int = 8, seed: int = NULL_SEED
) -> NullBand | None:
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
        raise ValueError(f"the null band needs at least 2 fresh draws, got draws={draws}")
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
    deep = torch.tensor([_deep(row) for row in per_draw], dtype=torch.float64)  # (K,)
    return NullBand(
        cos=cos,
        null_mean=table.mean(0).tolist(),
        null_std=table.std(0).tolist(),
        deep=_deep(cos),
        deep_mean=deep.mean().item(),
        deep_std=deep.std().item(),
        draws=draws,
    )
