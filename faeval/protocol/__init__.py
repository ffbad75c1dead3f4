"""The diagnostic protocol: the heavier measurements, the audit, and verdicts judged from logs.

The verdicts, their rendering and the settings are pure Python; the measurements need torch.
Names are imported on first use (PEP 562), so ``import faeval.protocol.verdicts`` (what a
report needs) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Where each exported name lives, relative to this package.
_EXPORTS = {
    "audit": [
        "AuditRecord",
        "audit_checkpoint",
        "audit_model",
        "audit_markdown",
        "audit_text",
        "write_audit",
    ],
    "intervals": ["Interval", "paired_interval", "seeds_to_settle"],
    "measure": ["measure_protocol"],
    "null": ["NullBandFigures", "has_feedback", "null_band"],
    "perturbation": ["PerturbationFigures", "pearson", "perturbation_correlation"],
    "render": ["interval_text", "run_markdown", "run_text", "verdict_table"],
    "settings": ["ProtocolSettings", "Thresholds"],
    "stability": ["StabilityFigures", "direction_stability", "stability_layer"],
    "verdicts": [
        "DIAGNOSTICS",
        "RunVerdict",
        "SeedVerdict",
        "Verdict",
        "judge_run",
        "judge_seeds",
        "merge_seeds",
    ],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
