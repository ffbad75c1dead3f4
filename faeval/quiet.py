"""Lightning's lines that a faeval user cannot act on, silenced wherever faeval is used: on
the command line and from Python.

- ``The `srun` command is available on your system but is not used``: Lightning asks every
  run outside srun on a machine with Slurm installed; faeval's sweeps submit through Slurm
  themselves and a run from Python is meant to run where it is.
- ``isinstance(treespec, LeafSpec)`` is deprecated: lightning 2.6 calls a torch 2.14 API.
- Lightning's "💡 Tip:" advertisements for its cloud services.

Only these messages are filtered; every other warning and log line stays.
"""

from __future__ import annotations

import logging
import warnings

from typing_extensions import override

#: Lightning's log lines that say nothing about a run.
TIPS = ("💡 Tip:",)
#: The command line also drops the hardware banners (faeval prints its own start line) and
#: Lightning's note that it keeps faeval's summary in place of its own.
BANNERS = (
    *TIPS,
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "Seed set to",
    "Trainer already configured with model summary callbacks",  # faeval's own ModelSummary
)


class _DropLines(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    @override
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefixes)


def quiet_lightning(prefixes: tuple[str, ...] = TIPS) -> None:
    """Filters the warnings above and drops log lines starting with ``prefixes`` from
    Lightning's handlers (idempotent)."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system")
    import lightning.pytorch  # noqa: F401  (its import adds the handlers filtered here)

    for name in ("lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            if not any(
                isinstance(f, _DropLines) and f.prefixes == prefixes for f in handler.filters
            ):
                handler.addFilter(_DropLines(prefixes))
