"""One diagnostic pass: the per-layer figures of a method on the probe batch."""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from faeval.diagnostics.functional import mean_cosine, mean_norm, true_gradients


@dataclass
class LayerFigures:
    """Per-layer figures of one pass, index l = 0..L.

    Attributes:
        h_norm: mean per-sample ‖h_l‖₂.
        g_norm: mean per-sample ‖g_l‖₂, g_l = ∂ℓ̄/∂h_l of the probe's mean loss.
        cos: mean per-sample cos(a_l, g_l), unclamped (NaN where a norm is 0).
        loss: the probe batch's mean cross-entropy.
        acc: the probe batch's accuracy.
    """

    h_norm: list[float]
    g_norm: list[float]
    cos: list[float]
    loss: float
    acc: float

    def as_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def full_precision(module: torch.nn.Module, device_type: str):
    """Runs ``module`` in float32 with autocast off, whatever the training precision.

    fp16 turns 1e-10 gradients into zeros; a 16-bit module is cast up for the pass and cast
    back afterwards (exact: every 16-bit value is a float32 value). BatchNorm and dropout are
    put in eval mode for the pass.
    """
    dtype = next(module.parameters()).dtype
    was_training = module.training
    low = dtype in (torch.float16, torch.bfloat16)
    if low:
        module.float()
    module.eval()
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        if low:
            module.to(dtype)
        module.train(was_training)


def measure_layers(method, x: Tensor, y: Tensor) -> LayerFigures:
    """‖h_l‖, ‖g_l‖ and cos(a_l, g_l) for every layer of ``method`` on the batch (x, y).

    Args:
        method: a ``CreditMethod`` (its backbone and its ``credits``).
        x: probe inputs, already normalised.
        y: true probe labels.
    """
    backbone = method.backbone
    with full_precision(method, x.device.type):
        x = x.float()
        with torch.no_grad():
            h0 = backbone.embed(x)
        trace, grads = true_gradients(backbone, h0, y)
        credits = method.credits(trace, y)
        loss = F.cross_entropy(trace.logits, y).item()
        acc = (trace.logits.argmax(1) == y).float().mean().item()
    return LayerFigures(
        h_norm=[mean_norm(h) for h in trace.states],
        g_norm=[mean_norm(g) for g in grads],
        cos=[mean_cosine(a, g) for a, g in zip(credits, grads, strict=True)],
        loss=loss if math.isfinite(loss) else float("nan"),
        acc=acc,
    )
