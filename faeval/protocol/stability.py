"""Diagnostic (c), direction stability: does the credit point the same way batch after batch?

At layer L/2, the batch-mean credit of each of ≥ 8 probe batches of 128 samples is taken as a
direction; the figure is the mean cosine over all pairs of batches. A credit dominated by
noise (or by a direction unrelated to the data) changes from batch to batch. The same figure
for the true gradient is reported beside it as the reference. It is reported, not a clean
pass/fail on its own (docs/protocol.md).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from faeval.diagnostics.functional import sample_cosines, true_gradients


@dataclass
class StabilityFigures:
    """Mean pairwise cosine of batch-mean directions at one layer.

    Attributes:
        credit: of the method's credit a_l.
        gradient: of the true gradient g_l (the reference).
        layer: l = max(1, L // 2).
        batches: number of probe batches.
        batch_size: samples per batch.
    """

    credit: float
    gradient: float
    layer: int
    batches: int
    batch_size: int

    def as_dict(self) -> dict:
        return asdict(self)


def stability_layer(num_blocks: int) -> int:
    """L/2, rounded down, and never the embedding layer 0."""
    return max(1, num_blocks // 2)


def pairwise_stability(directions: Tensor) -> float:
    """Mean cosine over all pairs of rows of ``directions`` (K, ...), in float64, no clamp."""
    k = len(directions)
    pairs = list(itertools.combinations(range(k), 2))
    i, j = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    return sample_cosines(directions[i], directions[j]).mean().item()  # (P,) -> mean


def direction_stability(
    method,
    h0: Tensor,
    y: Tensor,
    batch_size: int = 128,
    num_batches: int = 8,
    inputs: Tensor | None = None,
) -> StabilityFigures:
    """Diagnostic (c) on the first ``num_batches × batch_size`` probe samples.

    Args:
        method: a ``CreditMethod``.
        h0: the probe's embedding outputs h_0.
        y: probe labels.
        batch_size: samples per batch (128 in the protocol).
        num_batches: batches (≥ 8 in the protocol; at least 2).
        inputs: the probe's inputs x, for credits that need them (``Trace.inputs``).

    Raises:
        ValueError: fewer than 2 batches, or the probe holds fewer than
            ``num_batches × batch_size`` samples.
    """
    if num_batches < 2 or batch_size < 1:
        raise ValueError(
            f"direction stability needs num_batches >= 2 and batch_size >= 1, got "
            f"{num_batches} and {batch_size}"
        )
    if len(h0) < num_batches * batch_size:
        raise ValueError(
            f"direction stability needs {num_batches} batches of {batch_size} = "
            f"{num_batches * batch_size} probe samples, the probe has {len(h0)}; raise "
            "--data.probe_size or lower the stability batch size/count"
        )
    layer = stability_layer(method.backbone.num_blocks)
    credit_dirs, grad_dirs = [], []
    for b in range(num_batches):
        part = slice(b * batch_size, (b + 1) * batch_size)
        x = None if inputs is None else inputs[part]
        trace, grads = true_gradients(method.backbone, h0[part], y[part], inputs=x)
        credit_dirs.append(method.credits(trace, y[part])[layer].mean(0))  # (B, ...) -> (...)
        grad_dirs.append(grads[layer].mean(0))
    return StabilityFigures(
        credit=pairwise_stability(torch.stack(credit_dirs)),
        gradient=pairwise_stability(torch.stack(grad_dirs)),
        layer=layer,
        batches=num_batches,
        batch_size=batch_size,
    )
