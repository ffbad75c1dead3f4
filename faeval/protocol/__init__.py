"""The diagnostic protocol: the heavier measurements and the verdicts judged from logs."""

from faeval.protocol.measure import ProtocolSettings, run_protocol
from faeval.protocol.null import NullBand, has_feedback, null_band
from faeval.protocol.perturbation import PerturbationFigures, pearson, perturbation_correlation
from faeval.protocol.render import run_markdown, run_text, verdict_table
from faeval.protocol.stability import StabilityFigures, direction_stability, stability_layer
from faeval.protocol.verdicts import (
    DIAGNOSTICS,
    RunVerdict,
    SeedVerdict,
    Thresholds,
    Verdict,
    combine,
    combine_runs,
    judge_run,
)

__all__ = [
    "DIAGNOSTICS",
    "NullBand",
    "PerturbationFigures",
    "ProtocolSettings",
    "RunVerdict",
    "SeedVerdict",
    "StabilityFigures",
    "Thresholds",
    "Verdict",
    "combine",
    "combine_runs",
    "direction_stability",
    "has_feedback",
    "judge_run",
    "null_band",
    "pearson",
    "perturbation_correlation",
    "run_markdown",
    "run_protocol",
    "run_text",
    "stability_layer",
    "verdict_table",
]
