"""Run folders: named by what the run is, claimed atomically, never shared.

A run folder holds one run's ``config.yaml``, its row files, its TensorBoard events and its
``checkpoints/``. By default it is ``lightning_logs/<data>/<method>/seed<S>`` under the
trainer's root folder; when that name is taken, the next free ``seed<S>-run2``, ``-run3``…
Claiming a folder is the exclusive creation of its ``faeval_run.json`` (who claimed it,
when, with which command), so any number of runs started at once, on one machine or on
several sharing a file system, end up in folders of their own. A folder that holds a run is
never given to another: continuing a run with ``--ckpt_path`` is the one way back in.

Pure Python (no torch).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import string
import sys
import time
from pathlib import Path

from faeval.errors import ConfigError, RunFolderTaken
from faeval.runend import END_FILE

#: The file whose exclusive creation claims a folder for one run.
CLAIM_FILE = "faeval_run.json"
#: The default run name: fields ``data``, ``method``, ``backbone``, ``seed``.
DEFAULT_RUN_NAME = "{data}/{method}/seed{seed}"
#: The folder under the trainer's root that holds the runs named by default.
LOGS = "lightning_logs"
#: Files and folders whose presence means a folder holds a run.
RUN_MARKERS = (CLAIM_FILE, "config.yaml", "diagnostics.jsonl", "checkpoints")
#: What a run writes into its folder before its first row (a stack: stack.json too).
EARLY_FILES = (CLAIM_FILE, "config.yaml", "hparams.yaml", "stack.json", END_FILE)


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` already holds a run (a claim, a config, rows, checkpoints or events)."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    return any((folder / m).exists() for m in RUN_MARKERS) or any(
        folder.glob("events.out.tfevents.*")
    )


def claim(folder: Path, info: dict | None = None) -> Path:
    """Claims ``folder`` for one run: creates it and, exclusively, its claim file.

    Args:
        folder: the run folder (created with its parents when absent).
        info: what to record in the claim file besides host, pid, time and command.

    Raises:
        RunFolderTaken: the folder holds a run, or another process claimed it first.
    """
    folder = Path(folder)
    if holds_run(folder):
        raise RunFolderTaken(_taken(folder))
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv,
        **(info or {}),
    }
    try:
        with (folder / CLAIM_FILE).open("x") as fh:  # O_EXCL: one process wins
            json.dump(record, fh, indent=1)
    except FileExistsError:
        raise RunFolderTaken(_taken(folder)) from None
    return folder


def run_seed(folder: Path) -> int | None:
    """The seed the run in ``folder`` was claimed with (its claim file), or None."""
    try:
        seed = json.loads((Path(folder) / CLAIM_FILE).read_text()).get("seed")
    except (OSError, ValueError, AttributeError):
        return None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def release_unused(folder: Path | None) -> bool:
    """Gives back a claimed run folder that the run left without rows or checkpoints.

    A run that fails before its first row (a missing data set, a bad option found late)
    leaves nothing worth keeping; its folder would only push the next run to ``-run2``. The
    files such a run writes (``EARLY_FILES``, TensorBoard events) are removed, then the
    folder when nothing else is left in it: what others put there (a sweep's ``run.log``,
    which it is still writing) stays.

    Returns:
        Whether the claim was given back.
    """
    if folder is None or not (Path(folder) / CLAIM_FILE).is_file():
        return False
    folder = Path(folder)
    if (folder / "diagnostics.jsonl").exists() or (folder / "checkpoints").exists():
        return False
    for path in folder.iterdir():
        if path.name in EARLY_FILES or path.name.startswith("events.out.tfevents."):
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()  # only when empty
    return True


def claim_next(base: Path, info: dict | None = None) -> Path:
    """Claims ``base``, or when it is taken the first free ``base-run2``, ``base-run3``…"""
    base = Path(base)
    for n in range(1, 100_000):
        folder = base if n == 1 else base.with_name(f"{base.name}-run{n}")
        try:
            return claim(folder, info)
        except RunFolderTaken:
            continue
    raise RunFolderTaken(f"no free run folder next to {base}")


def run_name(template: str, **fields: object) -> str:
    """The run's name from a template such as ``{data}/{method}/seed{seed}``.

    Raises:
        ValueError: the template names a field that is not known or reaches into one
            (``{seed.__class__}``), or does not name a folder below lightning_logs.
    """
    plain = ", ".join("{" + k + "}" for k in fields)
    for _, field, _, _ in string.Formatter().parse(template):
        if field and not field.isidentifier():  # {seed.__class__}, {data[0]}: plain fields only
            raise ConfigError(f"--run_name {template!r}: {{{field}}} is not a field; use {plain}")
    try:
        name = template.format(**fields)
    except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(
            f"--run_name {template!r} cannot be filled ({err}); it may use {plain}"
        ) from None
    parts = Path(name).parts  # "." and "./" have none: lightning_logs itself
    if not parts or Path(name).is_absolute() or ".." in parts:
        raise ConfigError(
            f"--run_name {template!r} gives {name!r}; it must name a folder below lightning_logs, "
            f"such as {DEFAULT_RUN_NAME}"
        )
    return name


def _taken(folder: Path) -> str:
    return (
        f"{folder} already holds a run; give the new run another name (--run_name) or "
        "folder, or continue that run with --ckpt_path <its checkpoint>"
    )


def folder_args(run_dir: str | Path) -> list[str]:
    """The ``faeval fit`` options of a run started by another process (a sweep, the audit's
    FrozenBlocks baseline) that logs straight into ``run_dir``, without a progress bar."""
    return [
        "--trainer.logger", "TensorBoardLogger",
        "--trainer.logger.save_dir", str(run_dir),
        "--trainer.logger.name", "",
        "--trainer.logger.version", "",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
