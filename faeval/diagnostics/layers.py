"""One diagnostic pass: the per-layer figures of a method on the probe batch."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from faeval.data.contract import check_labels
from faeval.diagnostics.functional import (
    matrix_angle,
    mean_cosine,
    mean_norm,
    norm_ratio,
    scaled_error,
    true_gradients,
)


@dataclass
class LayerFigures:
    """Per-layer figures of one pass, index l = 0..L.

    Attributes:
        h_norm: mean per-sample ‖h_l‖₂.
        g_norm: mean per-sample ‖g_l‖₂, g_l = ∂ℓ̄/∂h_l of the probe's mean loss.
        cos: mean per-sample cos(a_l, g_l), unclamped (NaN where a norm is 0).
        loss: the probe batch's mean cross-entropy.
        acc: the probe batch's accuracy.
        credit_error: ‖a_l − c_l·∂ℓ_i/∂h_l‖ / ‖c_l·∂ℓ_i/∂h_l‖ over the probe, with c_l the
            best single factor (``scaled_error``): at rounding level, a_l is backprop's
            gradient (times c_l).
        credit_scale: c_l (1 when a_l is backprop's gradient itself).
        feedback_layers: names of the layers whose backward uses a feedback matrix B in
            place of W (``CreditMethod.feedback_pairs``; empty for other methods).
        feedback_angle: per such layer, the angle between W and B in degrees.
        feedback_norm_ratio: per such layer, ‖B‖ / ‖W‖.
    """

    h_norm: list[float]
    g_norm: list[float]
    cos: list[float]
    loss: float
    acc: float
    credit_error: list[float] = field(default_factory=list)
    credit_scale: list[float] = field(default_factory=list)
    feedback_layers: list[str] = field(default_factory=list)
    feedback_angle: list[float] = field(default_factory=list)
    feedback_norm_ratio: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def full_precision(module: torch.nn.Module, device_type: str) -> Iterator[torch.dtype]:
    """Runs ``module`` in float32 (float64 if it is float64) with autocast off, whatever the
    training precision; yields that dtype, the one to give the module's inputs.

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
            yield torch.float32 if low else dtype
    finally:
        if low:
            module.to(dtype)
        module.train(was_training)


def measure_layers(method, x: Tensor, y: Tensor) -> LayerFigures:
    """‖h_l‖, ‖g_l‖, cos(a_l, g_l) and a_l's distance from backprop for every layer of
    ``method`` on the batch (x, y), and the W–B figures of its feedback layers, if any.

    Args:
        method: a ``CreditMethod`` (its backbone and its ``credits``).
        x: probe inputs, already normalised.
        y: true probe labels.

    Raises:
        DataContractError: the labels are not class indices in 0..C−1.
    """
    backbone = method.backbone
    check_labels(y, backbone.num_classes, "the probe batch")
    with full_precision(method, x.device.type) as dtype:
        x = x.to(dtype)
        with torch.no_grad():
            h0 = backbone.embed(x)
        trace, grads = true_gradients(backbone, h0, y, inputs=x)
        credits = method.credits(trace, y)
        loss = F.cross_entropy(trace.logits, y).item()
        acc = (trace.logits.argmax(1) == y).float().mean().item()
        # g_l carries the mean's 1/N: N·g_l holds each sample's ∂ℓ_i/∂h_l, the credits' scale.
        match = [scaled_error(a, g * len(y)) for a, g in zip(credits, grads, strict=True)]
        pairs = method.feedback_pairs()
    return LayerFigures(
        h_norm=[mean_norm(h) for h in trace.states],
        g_norm=[mean_norm(g) for g in grads],
        cos=[mean_cosine(a, g) for a, g in zip(credits, grads, strict=True)],
        loss=loss if math.isfinite(loss) else float("nan"),
        acc=acc,
        credit_error=[e for e, _ in match],
        credit_scale=[c for _, c in match],
        feedback_layers=[name for name, _, _ in pairs],
        feedback_angle=[matrix_angle(w, b) for _, w, b in pairs],
        feedback_norm_ratio=[norm_ratio(w, b) for _, w, b in pairs],
    )
