"""The tiny sweep both executors run."""

from __future__ import annotations

from pathlib import Path

from faeval.study import report, sweep
from tests.helpers import TINY_RUN
from tests.protocol.cli_args import CHEAP

#: The repository root (the shipped configs the specs name).
ROOT = Path(__file__).resolve().parents[2]

__all__ = ["ROOT", "SPEC", "report", "sweep"]

SPEC = {
    "seeds": [0, 1],
    "methods": ["DFA"],  # FrozenBlocks joins automatically: 2 methods × 2 seeds
    "args": [*TINY_RUN, "--trainer.max_epochs", "1"],
    "protocol": {"every_n_epochs": 1, "settings": CHEAP},
    "settings": {"tiny": {"model.backbone.w2_std": 0.01}},
}
