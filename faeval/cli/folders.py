"""Where a command's run writes: the log root and the TensorBoard logger of a run folder.

Shared by the lone run (``faeval.cli.lightning``) and the stack of seeds
(``faeval.cli.stacked``); how a folder is named and claimed is ``FaevalCLI.claim_run``.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import TensorBoardLogger

from faeval.runs import DEFAULT_RUN_NAME, LOGS, claim, claim_next, run_name


def log_root(default_root_dir: str | Path | None) -> Path:
    """``<trainer.default_root_dir>/lightning_logs`` (the working folder when not given)."""
    return Path(default_root_dir or Path.cwd()) / LOGS


def folder_logger(run_dir: Path) -> TensorBoardLogger:
    """A TensorBoard logger writing straight into ``run_dir``."""
    return TensorBoardLogger(
        save_dir=run_dir.parent, name="", version=run_dir.name, default_hp_metric=False
    )


def run_logger(
    model,
    datamodule,
    seed: int = 0,
    root: str | Path | None = None,
    name: str = DEFAULT_RUN_NAME,
) -> TensorBoardLogger:
    """The logger of a run trained from Python, in the folder ``faeval fit`` would use.

    ``Trainer(logger=run_logger(method, data, seed=0))`` writes to
    ``<root>/lightning_logs/<Data>/<Method>/seed<S>`` (``-run2``, ``-run3``… when that holds a
    run), claimed as the command line claims it, so a script's runs sit beside the command
    line's, named alike, and ``faeval report`` and ``load_sweep`` read them the same way. With
    ``Diagnostics`` the folder also gets the ``config.yaml`` that ``faeval audit RUN_DIR``
    rebuilds the run from.

    Args:
        model: the method (its class names the folder).
        datamodule: the data (its class names the folder).
        seed: the seed the run was started with (``lightning.seed_everything(seed)``).
        root: the folder holding ``lightning_logs`` (default: the working folder).
        name: the run-name template, as ``--run_name``.

    Raises:
        ConfigError: ``name`` cannot be filled or is not a relative folder name.
    """
    fields = {
        "data": type(datamodule).__name__,
        "method": type(model).__name__,
        "backbone": type(model.backbone).__name__,
        "seed": seed,
    }
    folder = log_root(root) / run_name(name, **fields)
    return folder_logger(
        claim_next(folder, fields) if name == DEFAULT_RUN_NAME else claim(folder, fields)
    )
