"""How a run ended, as the run itself saw it: ``end.json`` in its folder.

A run's state is derived from what it did, never from how its process ended: Lightning
exits 0 on SIGTERM (what ``scancel`` and a node shutdown send), so "exit 0 and a row on
disk" is not "finished". The ``Diagnostics`` callback writes the record when ``fit`` ends:

- ``finished``: the planned epochs (or steps) were trained;
- ``stopped``: training ended early for a reason the run recorded (the (b) floor stop, an
  early-stopping callback);
- ``diverged``: a training figure went non-finite (NaN or inf), or the method said its
  relaxation diverged; training stopped there;
- ``interrupted``: a signal (SIGTERM, SIGINT, Ctrl-C) stopped it: it continues from its
  ``checkpoints/last.ckpt``;
- ``failed``: its own error (a traceback, a refused option).

A run killed outright (SIGKILL, a lost node) writes nothing: no record is ``interrupted``
too. A run that starts or continues removes its old record first. Pure Python (no torch).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Literal

#: The record's file in the run folder.
END_FILE = "end.json"

State = Literal["finished", "stopped", "diverged", "interrupted", "failed"]
#: States that end a run for good: a sweep does not train it again.
DONE: tuple[State, ...] = ("finished", "stopped", "diverged")


def write_end(run_dir: str | Path, state: State, reason: str, **figures: Any) -> dict:
    """Writes ``end.json`` atomically (a temporary file renamed over it) and returns it.

    Args:
        run_dir: the run folder.
        state: how the run ended.
        reason: why, in words (one line).
        figures: anything else worth keeping (epochs trained, planned epochs…).
    """
    record = {"state": state, "reason": reason, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    record.update(figures)
    path = Path(run_dir) / END_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{END_FILE}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(temp, path)
    return record


def read_end(run_dir: str | Path) -> dict | None:
    """The run's end record, or None (still running, killed outright, or never started)."""
    try:
        record = json.loads((Path(run_dir) / END_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("state") else None


def clear_end(run_dir: str | Path) -> None:
    """Removes an earlier attempt's record: the run is training again."""
    (Path(run_dir) / END_FILE).unlink(missing_ok=True)
