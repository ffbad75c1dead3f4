"""Resuming a run: checkpoints written atomically, the last one kept, options checked.

A run of ``faeval fit`` keeps ``checkpoints/last.ckpt`` (``LastCheckpoint``: every epoch,
optionally every N steps), written by ``AtomicCheckpointIO`` so that a kill while writing
never leaves a torn file to resume from. ``--ckpt_path`` continues it, bit for bit, mid-epoch
too; options given on that command line that contradict the checkpoint's hyperparameters
are an error (``ResumeConflict``) instead of being silently replaced by them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import CheckpointIO, TorchCheckpointIO
from typing_extensions import override

from faeval.callbacks import LastCheckpoint
from faeval.errors import ConfigError
from faeval.protocol.checkpoint import load_checkpoint

#: How a checkpoint being written is named beside its final path (hidden, never ``*.ckpt``).
TEMP_PATTERN = ".{name}.*.tmp"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with atomic local writes.

    Each checkpoint goes to a hidden temporary file in the destination folder, is flushed to
    disk (``fsync``), then renamed over the destination (``os.replace``, atomic on POSIX file
    systems, shared ones included); the folder is synced so the rename survives a crash. A
    process killed while writing leaves the previous checkpoint whole and at most a stray
    ``.NAME.XXXX.tmp``, which the next save of that name removes. (Lightning's own save
    stages the bytes in a temporary file under /tmp and moves it: a copy, not a rename, when
    /tmp is another file system.) Remote paths (``s3://`` …) go through Lightning's writer.
    """

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes it private; a save would not
            with os.fdopen(fd, "wb") as fh:
                self._write(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        _fsync_dir(path.parent)
        for stale in path.parent.glob(TEMP_PATTERN.format(name=path.name)):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()  # left by a writer that was killed

    def _write(self, checkpoint: dict[str, Any], fh: IO[bytes]) -> None:
        """Serialises the checkpoint into the open temporary file."""
        torch.save(checkpoint, fh)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems refuse to open or sync a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def checkpointing(trainer_config: Mapping[str, Any], every_n_steps: int = 0) -> dict[str, list]:
    """The trainer arguments that make a run resumable: ``callbacks`` and ``plugins``.

    Adds ``LastCheckpoint`` unless checkpointing is off or the user configured a
    ``ModelCheckpoint`` of their own, and ``AtomicCheckpointIO`` unless a checkpoint IO was
    given. Returns the full lists, the user's entries first.

    Args:
        trainer_config: the trainer's arguments as parsed (``callbacks``, ``plugins``,
            ``enable_checkpointing``).
        every_n_steps: ``LastCheckpoint``'s ``every_n_train_steps``.
    """
    callbacks = _as_list(trainer_config.get("callbacks"))
    plugins = _as_list(trainer_config.get("plugins"))
    if trainer_config.get("enable_checkpointing", True) is not False and not any(
        isinstance(c, ModelCheckpoint) for c in callbacks
    ):
        callbacks.append(LastCheckpoint(every_n_steps))
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return {"callbacks": callbacks, "plugins": plugins}


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class ResumeConflict(ConfigError):
    """Options given to a resumed run contradict the checkpoint's hyperparameters."""


def check_resume_options(
    given: Any, ckpt_path: str | Path, saved: Mapping[str, Any] | None = None
) -> None:
    """Refuses model options given to a resumed run that contradict its checkpoint's.

    Args:
        given: the ``model`` options given explicitly (jsonargparse's Namespace, parsed with
            ``defaults=False``: command line and ``--config`` files), or None.
        ckpt_path: the checkpoint being resumed.
        saved: the hyperparameters to hold them against (default: the checkpoint's own
            ``hyper_parameters``; a stack's checkpoint records its seeds' apart, see
            ``faeval.cli.stacked.check_stack_resume``).

    Raises:
        ResumeConflict: naming each contradicting option and the checkpoint's value.
    """
    if saved is None:
        saved = load_checkpoint(ckpt_path).get("hyper_parameters", {})
    given = given.as_dict() if hasattr(given, "as_dict") else dict(given or {})
    conflicts = conflicting_options(given, saved)
    if conflicts:
        raise ResumeConflict(
            f"--ckpt_path {ckpt_path} was saved with other model options: "
            + "; ".join(conflicts)
            + ". Resume with the run's own options (faeval fit --config RUN/config.yaml "
            "--ckpt_path CKPT) or leave these out."
        )


def conflicting_options(given: Mapping[str, Any], saved: Mapping[str, Any]) -> list[str]:
    """The model options given on the command line that differ from the checkpoint's.

    Args:
        given: the ``model`` part of the options given explicitly (command line or
            ``--config`` files, defaults left out), as ``{"class_path", "init_args"}``.
        saved: the checkpoint's ``hyper_parameters`` (``_class_path`` and the init args, as
            LightningCLI saves them).

    Returns:
        one ``--model.x GIVEN (checkpoint: SAVED)`` entry per contradiction.
    """
    saved = {k: v for k, v in saved.items() if k != "_instantiator"}
    saved_tree = {"class_path": saved.pop("_class_path", None), "init_args": saved}
    saved_flat = dict(_flatten(saved_tree))
    out = []
    for key, value in _flatten(given):
        if key in saved_flat and _plain(saved_flat[key]) != _plain(value):
            option = "--model" + "".join(
                f".{part}" for part in key.split(".") if part not in ("init_args", "class_path")
            )
            out.append(f"{option} {_show(value)} (checkpoint: {_show(saved_flat[key])})")
    return out


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _plain(value: Any) -> Any:
    """Tuples and lists compare alike (YAML and the checkpoint keep sequences differently)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _show(value: Any) -> str:
    if isinstance(value, str) and "." in value:
        return value.rsplit(".", 1)[-1]  # a class path: its short name
    return str(_plain(value))
