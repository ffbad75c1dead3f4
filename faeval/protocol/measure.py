"""One pass of the protocol's heavier pieces on a probe batch: null band, ρ and stability."""

from __future__ import annotations

import time

import torch

from faeval.data.contract import check_labels
from faeval.diagnostics.functional import true_gradients
from faeval.diagnostics.layers import full_precision
from faeval.protocol.null import has_feedback, null_band
from faeval.protocol.perturbation import perturbation_correlation
from faeval.protocol.settings import ProtocolSettings
from faeval.protocol.stability import direction_stability
from faeval.runlog import ProtocolRow


def measure_protocol(
    method, x: torch.Tensor, y: torch.Tensor, settings: ProtocolSettings = ProtocolSettings()
) -> ProtocolRow:
    """The null band, ρ with its controls and diagnostic (c), with the seconds each took.

    Runs in float32 (a float64 model in float64) with autocast off and BatchNorm in eval mode
    (ρ in float64), whatever the training precision. A piece that does not apply or cannot be
    measured is None, with the reason under ``"<piece>_note"``.

    Args:
        method: a ``CreditMethod``.
        x: probe inputs, normalised.
        y: true probe labels.
        settings: the pieces' settings.

    Raises:
        DataContractError: the labels are not class indices in 0..C−1.

    Returns:
        The measured part of a ``ProtocolRow``: ``null`` (``NullBandFigures`` fields or
        None), ``rho`` (``PerturbationFigures`` fields), ``stability`` (``StabilityFigures``
        fields or None), their notes, and ``seconds`` per piece.
    """
    row: ProtocolRow = {"method": type(method).__name__, "seconds": {}}
    backbone = method.backbone
    check_labels(y, backbone.num_classes, "the probe batch")
    with full_precision(method, x.device.type) as dtype:
        with torch.no_grad():
            x = x.to(dtype)
            h0 = backbone.embed(x)
        trace, grads = true_gradients(backbone, h0, y, inputs=x)
        credits = method.credits(trace, y)

        start = time.perf_counter()
        band = null_band(method, trace, grads, y, settings.null_draws, settings.null_seed)
        row["seconds"]["null"] = time.perf_counter() - start
        row["null"] = None if band is None else band.as_dict()
        if band is None:
            row["null_note"] = (
                f"not applicable: {type(method).__name__} has no random feedback draw to redraw"
            )

        start = time.perf_counter()
        rho = perturbation_correlation(
            backbone,
            trace.states,
            y,
            credits,
            grads,
            settings.epsilon,
            settings.directions,
            settings.negative_draws,
            settings.seed,
        )
        row["seconds"]["rho"] = time.perf_counter() - start
        row["rho"] = rho.as_dict()

        start = time.perf_counter()
        try:
            stab = direction_stability(
                method, h0, y, settings.stability_batch_size, settings.stability_batches, x
            )
            row["stability"] = stab.as_dict()
        except ValueError as err:
            row["stability"] = None
            row["stability_note"] = str(err)
        row["seconds"]["stability"] = time.perf_counter() - start
    row["has_feedback"] = has_feedback(method)
    return row
