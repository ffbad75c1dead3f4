"""The ``faeval`` command line.

``faeval fit|validate|test|audit`` are LightningCLI commands (``faeval.cli.lightning``);
``faeval sweep`` and ``faeval report`` are the study's (``faeval.study``), which need no
Lightning to start. ``main`` picks the one the first argument names.
"""

from __future__ import annotations

import importlib
import sys

#: Commands that are not LightningCLI's: the study's, each with its module's ``main``.
STUDY_COMMANDS = {"sweep": "faeval.study.sweep", "report": "faeval.study.report"}

__all__ = ["STUDY_COMMANDS", "FaevalCLI", "known_names", "main", "run"]


def main(args: list[str] | None = None) -> None:
    """The ``faeval`` console script (``python -m faeval`` too).

    Args:
        args: replaces ``sys.argv[1:]``.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in STUDY_COMMANDS:
        code = importlib.import_module(STUDY_COMMANDS[argv[0]]).main(argv[1:])
        if code:
            raise SystemExit(code)
        return
    from faeval.cli.lightning import main as lightning_main

    lightning_main(args)


def __getattr__(name: str):
    # The Lightning side loads torch: only when asked for (PEP 562).
    if name in ("FaevalCLI", "known_names", "run", "known_classes", "run_arguments"):
        return getattr(importlib.import_module("faeval.cli.lightning"), name)
    raise AttributeError(f"module 'faeval.cli' has no attribute {name!r}")
