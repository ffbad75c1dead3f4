"""Where each run of a sweep stands, read from its folder: what the sweep does with it next.

A run's state comes from what the run recorded (``faeval.runend``: ``end.json``), never from
how its process ended (Lightning exits 0 on SIGTERM):

- ``ok``: it trained its planned epochs, or stopped for a reason it recorded (the (b) floor);
- ``diverged``: a figure went non-finite and it stopped there (listed apart by the report);
- ``interrupted``: a signal stopped it, or it was killed without a word (SIGKILL, a lost
  node): the sweep continues it from its ``checkpoints/last.ckpt`` (its stack's, or its own);
- ``failed``: its own error (a traceback, a refused option): the sweep starts it afresh,
  keeping the failed attempt in ``DIR/attempts/``;
- ``missing``: never started.

Each run's ``status.json`` (written by the sweep when its process ends) and ``results.csv``
(one row per planned run) say the same, with the figures of its last row. Pure Python.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path

from faeval.runend import DONE, read_end
from faeval.runlog import RunLog
from faeval.study.plan import LAST_CKPT, STACK_FILE, Run, stack_dir, stacks_dir

#: The states a sweep does not train again.
SETTLED = ("ok", "diverged")
COLUMNS = [
    "setting",
    "method",
    "seed",
    "status",
    "ended",
    "continued",
    "epochs",
    "seconds",
    "test_acc",
    "g_L",
    "growth",
    "rc",
    "run_dir",
    "error",
]
STATUS_FILE = "status.json"


def run_state(run_dir: Path) -> str:
    """``ok``, ``diverged``, ``interrupted``, ``failed`` or ``missing`` (module docstring)."""
    end = read_end(run_dir)
    if end is not None:
        state = end["state"]
        if state in DONE:
            return "diverged" if state == "diverged" else "ok"
        return "failed" if state == "failed" else "interrupted"
    status = read_status(run_dir) or {}
    if status.get("status") == "failed":  # failed before it trained (no end record)
        return "failed"
    if status or (run_dir / LAST_CKPT).is_file() or RunLog(run_dir).last_row():
        return "interrupted"  # killed outright, or lost with its task
    return "missing"


def resumable(run_dir: Path) -> bool:
    """Whether an earlier attempt of the run continues from its ``checkpoints/last.ckpt``: it
    was interrupted (not failed, not finished) and its checkpoint is there (written
    atomically: when there, it is whole)."""
    return run_state(run_dir) == "interrupted" and (run_dir / LAST_CKPT).is_file()


def stack_record(folder: Path) -> dict | None:
    """A stack folder's stack.json, or None."""
    try:
        return json.loads((folder / STACK_FILE).read_text())
    except (OSError, ValueError):
        return None


def resumable_stack(out: Path, runs: list[Run]) -> bool:
    """Whether an earlier stack of exactly these runs can be continued from its last.ckpt.

    Yes when its folder holds last.ckpt and its record names these seeds, and every one of
    its runs is interrupted (none failed or finished since).
    """
    folder = stack_dir(out, runs)
    record = stack_record(folder) or {}
    return (
        (folder / LAST_CKPT).is_file()
        and record.get("seeds") == [r.seed for r in runs]
        and all(run_state(r.dir(out)) == "interrupted" for r in runs)
    )


def continues(out: Path, runs: list[Run]) -> bool:
    """Whether the runs (a stack, or one run) continue from a checkpoint rather than afresh."""
    if len(runs) > 1:
        return resumable_stack(out, runs)
    return resumable(runs[0].dir(out))


def set_aside(out: Path, folder: Path) -> None:
    """Moves a failed or unusable earlier attempt out of the way, to DIR/attempts/…-<time>."""
    if not folder.exists():
        return
    runs = Path(out) / "runs"
    rel = folder.relative_to(runs) if folder.is_relative_to(runs) else folder.relative_to(out)
    kept = Path(out) / "attempts" / rel
    kept = kept.with_name(f"{kept.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(folder, kept)


def set_aside_stacks_of(out: Path, runs: list[Run]) -> None:
    """Sets aside every earlier stack that trained one of ``runs`` (started afresh now), so that
    a later sweep never continues a stale stack into their new folders."""
    seeds = {r.seed for r in runs}
    folder = stacks_dir(out, runs[0].setting, runs[0].method)
    for stack in sorted(folder.glob("seeds*")) if folder.is_dir() else []:
        if seeds & set((stack_record(stack) or {}).get("seeds") or []):
            set_aside(out, stack)


def exit_text(rc: int) -> str:
    """A process's exit code in words: ``killed by SIGKILL`` for -9."""
    if rc < 0:
        with_name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else rc
        return f"killed by {with_name}"
    return f"exit code {rc}"


def record_status(
    run: Run, out: Path, rc: int, seconds: float, log: str, cmd: list[str], resumed: bool
) -> dict:
    """Writes and returns a run's status.json: its state from what it recorded (``run_state``),
    the figures of its last row, and how its process ended."""
    run_dir = run.dir(out)
    previous = read_status(run_dir) or {}
    row = RunLog(run_dir).last_row() or {}
    end = read_end(run_dir)
    if end is not None:
        state, ended = run_state(run_dir), end.get("reason", "")
    elif rc < 0:  # killed by a signal before it could say so
        state, ended = "interrupted", exit_text(rc)
    elif rc:
        state, ended = "failed", exit_text(rc)
    else:
        state, ended = "interrupted", "the process ended without a record of how"
    error = ""
    if state == "failed":
        error = " | ".join(log.strip().splitlines()[-3:])[-500:]
    status = {
        "setting": run.setting,
        "method": run.method,
        "seed": run.seed,
        "status": state,
        "ended": ended,
        # attempts that continued from a checkpoint, this one included
        "continued": int(previous.get("continued") or 0) + int(resumed),
        "rc": rc,
        "epochs": row.get("epoch", 0),
        "seconds": round(seconds + float(previous.get("seconds") or 0) * resumed, 2),
        "test_acc": row.get("test/acc"),
        "g_L": row.get("g_L"),
        "growth": row.get("growth"),
        "run_dir": str(run_dir.relative_to(out)),
        "error": error,
        "cmd": cmd,
    }
    write_status(run_dir, status)
    return status


def write_status(run_dir: Path, status: dict) -> None:
    """status.json, written atomically (strict JSON: a non-finite figure is null)."""
    clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v
             for k, v in status.items()}  # fmt: skip
    temp = run_dir / f".{STATUS_FILE}.{os.getpid()}.tmp"
    temp.write_text(json.dumps(clean, indent=1, allow_nan=False))
    os.replace(temp, run_dir / STATUS_FILE)


def read_status(run_dir: Path) -> dict | None:
    """The run's status.json, or None."""
    try:
        return json.loads((run_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


def write_results(out: Path, runs: list[Run]) -> Path:
    """DIR/results.csv: one row per planned run, from the runs' status files.

    Written to a temporary file and renamed over the old one: Slurm tasks ending together
    each rewrite it, and a reader never sees half a file.
    """
    path = out / "results.csv"
    temp = out / f".results.csv.{os.getpid()}.tmp"
    with temp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for run in runs:
            status = read_status(run.dir(out)) or {
                "setting": run.setting,
                "method": run.method,
                "seed": run.seed,
                "status": run_state(run.dir(out)),
                "run_dir": str(run.dir(out).relative_to(out)),
            }
            writer.writerow(status)
    os.replace(temp, path)
    return path


def report_line(run: Run, status: dict) -> str:
    """The line printed when a run ends."""
    acc = status.get("test_acc")
    line = (
        f"[sweep] {status['status']:<11} {run.setting}/{run.method}/seed{run.seed}: "
        f"{status.get('epochs') or 0} epochs in {status.get('seconds') or 0:.1f} s, test acc "
        + ("n/a" if acc is None else f"{acc:.4f}")
    )
    if status.get("continued"):
        line += f", continued from last.ckpt ×{status['continued']}"
    if status.get("status") != "ok" and status.get("ended"):
        line += f" ({status['ended']})"
    if status.get("error"):
        line += f"  ({status['error']})"
    return line
