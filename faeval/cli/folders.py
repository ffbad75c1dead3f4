"""Where a command's run writes: the log root and the TensorBoard logger of a run folder.

Shared by the lone run (``faeval.cli.lightning``) and the stack of seeds
(``faeval.cli.stacked``); how a folder is named and claimed is ``FaevalCLI.claim_run``.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import TensorBoardLogger

from faeval.runs import LOGS


def log_root(default_root_dir: str | Path | None) -> Path:
    """``<trainer.default_root_dir>/lightning_logs`` (the working folder when not given)."""
    return Path(default_root_dir or Path.cwd()) / LOGS


def folder_logger(run_dir: Path) -> TensorBoardLogger:
    """A TensorBoard logger writing straight into ``run_dir``."""
    return TensorBoardLogger(
        save_dir=run_dir.parent, name="", version=run_dir.name, default_hp_metric=False
    )
