"""The per-epoch diagnostics callback: gathers tensors, calls ``faeval.diagnostics``, logs."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from tqdm import tqdm
from typing_extensions import override

from faeval.callbacks.tensorboard import flat_hparams, write_hparams, write_layout
from faeval.data.contract import Batch, trainer_probe
from faeval.diagnostics.layers import LayerFigures, measure_layers
from faeval.errors import ConfigError
from faeval.hparams import CLASS_PATH, class_config
from faeval.protocol.settings import DEFAULT_THRESHOLDS
from faeval.runend import clear_end, write_end
from faeval.runlog import (
    METHOD,
    ROWS_FILE,
    EpochRow,
    RunLog,
    epoch_scalars,
    keep_rows_through,
    summarize,
)
from faeval.runs import LOGS
from faeval.seeding import resolve_seed


def _fmt(v: float | None) -> str:
    return "    n/a " if v is None else f"{v:8.1e}"


def measure_once(trainer: Trainer, pl_module: LightningModule, probe) -> LayerFigures:
    """``measure_layers`` on global rank 0, its figures broadcast to every rank (DDP).

    Every rank holds the same weights and the same probe, so one measurement stands for all;
    every rank gets it, so all log the same figures (EarlyStopping on ``diag/g_L`` decides
    alike everywhere). Alone it is just ``measure_layers``.
    """
    if trainer.world_size == 1:
        return measure_layers(pl_module, *probe)
    fig = measure_layers(pl_module, *probe) if trainer.is_global_zero else None
    return trainer.strategy.broadcast(fig, src=0)


class Diagnostics(Callback):
    """Measures ‖h_l‖, ‖g_l‖ and cos(a_l, g_l) on the fixed probe batch every epoch.

    The figures go to the logger as ``diag/h_norm/l{l}``, ``diag/g_norm/l{l}``,
    ``diag/cos/l{l}``, ``diag/h_ratio/l{l}`` and ``diag/credit_error/l{l}`` (the credit's
    distance from backprop's gradient), for layer-wise feedback methods
    ``diag/feedback_angle/<layer>`` and ``diag/feedback_norm_ratio/<layer>`` (BioTorch's angle
    between W and B and ‖B‖/‖W‖), with ``diag/h_L``, ``diag/g_L``,
    ``diag/growth`` (largest ‖h_l‖ now / at initialisation), ``diag/floor`` (1 while
    diagnostic (b) fires), and, one JSON row per epoch, to ``diagnostics.jsonl`` in the run
    directory (row 0 is the initialisation). Cosines are logged as NaN and written as null
    while they are unmeasurable. Diagnostics run in float32 with autocast off and BatchNorm
    in eval mode, whatever the training precision.

    It also records how the run ended (``faeval.runend``: ``end.json``, finished, stopped,
    diverged, interrupted or failed), and ends a run whose training loss or figures went
    non-finite: nothing after a NaN can be trained or measured.

    Args:
        grad_floor: the floor of diagnostic (b) on ‖g_L‖.
        growth_threshold: the threshold of diagnostic (a) on the largest growth factor
            (printed as a warning; the verdict belongs to the protocol).
        every_n_epochs: measure every n epochs (and always after the last one).
        verbose: print a per-layer table every time it measures.
        probe: the probe batch (inputs, labels), from Python only; by default the data
            module's own probe, else the first samples of the validation data
            (``faeval.data.contract``), so any LightningDataModule or validation loader works.
    """

    def __init__(
        self,
        grad_floor: float = DEFAULT_THRESHOLDS.grad_floor,
        growth_threshold: float = DEFAULT_THRESHOLDS.growth_threshold,
        every_n_epochs: int = 1,
        verbose: bool = True,
        probe: Batch | None = None,
    ) -> None:
        if grad_floor <= 0 or growth_threshold <= 0 or every_n_epochs < 1:
            raise ConfigError(
                f"Diagnostics needs grad_floor > 0, growth_threshold > 0 and "
                f"every_n_epochs >= 1, got {grad_floor}, {growth_threshold}, {every_n_epochs}"
            )
        self.grad_floor = grad_floor
        self.growth_threshold = growth_threshold
        self.every_n_epochs = every_n_epochs
        self.verbose = verbose
        self.probe = probe
        self.init_h_norm: list[float] | None = None
        self.rows_through: int | None = None  # the last epoch whose row is written
        self.last_seconds = 0.0
        self.seed: int | None = None
        self._probe = None
        self._run_dir: Path | None = None
        #: Why the run stopped before its planned epochs, when something outside this
        #: callback stopped it and said why (a stacked seed's floor stop).
        self.stop_reason: str | None = None
        #: Set once a training figure went non-finite: the run ends as "diverged".
        self.diverged: str | None = None
        self.epochs_done: int | None = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"init_h_norm": self.init_h_norm, "rows_through": self.rows_through}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.init_h_norm = state_dict["init_h_norm"]
        self.rows_through = state_dict.get("rows_through")

    @staticmethod
    def run_log(trainer: Trainer) -> RunLog:
        """The run folder's log: the logger's folder, else the trainer's root.

        Under DDP ``trainer.log_dir`` is a collective (a broadcast from rank 0): call this
        on every rank, never from a rank-zero-only function (``setup`` does it once).
        """
        return RunLog(Path(trainer.log_dir or trainer.default_root_dir))

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._run_dir = self.run_log(trainer).dir  # every rank, once (DDP: a collective)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.seed = resolve_seed(None)
        self.stop_reason = self.diverged = None
        if trainer.is_global_zero:
            clear_end(self._run_dir)  # training (again): an earlier attempt's end no longer holds
            config = self._run_dir / "config.yaml"
            recorded = None if config.exists() else script_config(trainer, pl_module, self.seed)
            if recorded is not None:  # a run from Python: recorded as faeval fit records it
                config.write_text(yaml.safe_dump(recorded, sort_keys=False))
        if isinstance(trainer.logger, TensorBoardLogger) and trainer.is_global_zero:
            write_layout(trainer.logger)
            write_hparams(trainer.logger, self._hparams(trainer, pl_module))

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The probe is taken here rather than at fit start: a Trainer given loaders instead of
        # a data module has set its validation loaders up only by now.
        self._probe = trainer_probe(trainer, pl_module.device, self.probe)
        if self.init_h_norm is None:  # a fresh run; a resumed one restored it
            fig = measure_once(trainer, pl_module, self._probe)
            self.init_h_norm = fig.h_norm
            row = self._row(trainer, pl_module, fig, epoch=0)
            if trainer.logger is not None:
                trainer.logger.log_metrics(epoch_scalars(row), step=0)
            self._write(trainer, row)
        elif self.rows_through is not None and trainer.is_global_zero:
            # Resumed: rows written after this checkpoint (the run redoes that work) and a
            # line torn by the kill go, so every epoch keeps exactly one row.
            keep_rows_through(RunLog(self._run_dir).rows_path, self.rows_through)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch + 1  # epochs completed
        self.epochs_done = epoch
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        loss = self._metrics(trainer, pl_module).get("train/loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._diverge(trainer, f"the training loss is {float(loss)} after epoch {epoch}")
        if epoch % self.every_n_epochs and not last and not self.diverged:
            return
        start = time.perf_counter()
        fig = measure_once(trainer, pl_module, self._probe)
        self.last_seconds = time.perf_counter() - start
        row = self._row(trainer, pl_module, fig, epoch)
        scalars = epoch_scalars(row)
        for name, value in scalars.items():  # for early stopping and checkpoint callbacks
            pl_module.log(name, value, logger=False, sync_dist=True)
        if trainer.logger is not None:
            trainer.logger.log_metrics(scalars, step=epoch)  # x = epoch, as the method's own
        self._write(trainer, row)
        if row["nonfinite"] and not self.diverged:
            self._diverge(trainer, f"activations or gradients are not finite after epoch {epoch}")

    def _diverge(self, trainer: Trainer, why: str) -> None:
        """Ends the run: past a non-finite figure nothing trains or measures."""
        self.diverged = why
        trainer.should_stop = True
        if trainer.is_global_zero:
            tqdm.write(f"[faeval] diverged: {why}; the run stops here")

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            self._write_end(trainer, *self._how_it_ended(trainer))
        if self.verbose and trainer.is_global_zero:
            run_dir = self._run_dir
            kept = [f"{ROWS_FILE} (one row per epoch)"]
            kept += [name for name in ("config.yaml", "checkpoints/") if (run_dir / name).exists()]
            tqdm.write(
                f"[faeval] run folder {run_dir}: {', '.join(kept)}; TensorBoard: "
                f"tensorboard --logdir {logs_root(run_dir)}, then open "
                "http://localhost:6006/#custom_scalars (faeval's charts)"
            )

    @override
    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if not trainer.is_global_zero or self._run_dir is None:
            return
        if isinstance(exception, SIGTERMException):
            state, why = "interrupted", "SIGTERM (scancel, a time limit, a shutdown)"
        elif isinstance(exception, KeyboardInterrupt):
            state, why = "interrupted", "SIGINT (Ctrl-C)"
        elif isinstance(exception, SystemExit):
            state, why = "interrupted", f"the process was asked to exit ({exception.code})"
        elif isinstance(exception, FloatingPointError):  # faeval's TrainingDiverged too
            state, why = "diverged", str(exception).splitlines()[0] if str(exception) else ""
        else:
            first = str(exception).splitlines()[0] if str(exception) else ""
            state, why = "failed", f"{type(exception).__name__}: {first}"
        self._write_end(trainer, state, why)

    def _how_it_ended(self, trainer: Trainer) -> tuple[str, str]:
        """The state and reason of a ``fit`` that returned."""
        epochs = self._epochs(trainer)
        planned = trainer.max_epochs
        max_steps = getattr(trainer, "max_steps", -1)
        if self.diverged:
            return "diverged", self.diverged
        if planned is not None and planned >= 0 and epochs >= planned:
            return "finished", f"trained the planned {planned} epochs"
        if max_steps is not None and max_steps > 0 and trainer.global_step >= max_steps:
            return "finished", f"trained the planned {max_steps} steps"
        if self.stop_reason:
            return "stopped", self.stop_reason
        for callback in getattr(trainer, "callbacks", []):
            if isinstance(callback, EarlyStopping) and callback.stopped_epoch > 0:
                what = (
                    f"‖g_L‖ under the floor {self.grad_floor:g} (diagnostic (b))"
                    if callback.monitor == "diag/g_L"
                    else f"early stopping on {callback.monitor}"
                )
                return "stopped", f"{what} after epoch {epochs}"
        return "interrupted", f"training ended after {epochs} of {planned} epochs, no reason given"

    def _epochs(self, trainer: Trainer) -> int:
        """Epochs this run completed: counted at its last epoch end, or, where this process
        trained none (resumed from a checkpoint at its budget), the trainer's."""
        return self.epochs_done if self.epochs_done is not None else trainer.current_epoch

    def _write_end(self, trainer: Trainer, state: str, reason: str) -> None:
        write_end(
            self._run_dir,
            state,
            reason,
            epochs=self._epochs(trainer),
            planned_epochs=trainer.max_epochs,
            step=trainer.global_step,
        )

    @staticmethod
    def _hparams(trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        """The run's HParams row: what it is, capitalised so TensorBoard lists it first
        (Method, Data, Backbone, Seed), then its options."""
        options = {
            k: v
            for k, v in pl_module.hparams.items()
            if k not in ("input_shape", "num_classes") and not k.startswith("_")
        }
        flat = flat_hparams(options)
        data = trainer.datamodule
        params = {
            "Method": type(pl_module).__name__,
            "Data": "loaders" if data is None else type(data).__name__,
            "Backbone": flat.pop("backbone", type(pl_module.backbone).__name__),
            "Seed": resolve_seed(None),
            **flat,
        }
        for key in ("batch_size", "random_targets"):
            if hasattr(data, key):
                params[f"data.{key}"] = getattr(data, key)
        return params

    @staticmethod
    def _metrics(trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        """The epoch's figures so far (under DDP a collective: every rank calls it)."""
        # The method logs its epoch means after this callback runs: ask it for them directly.
        return {**trainer.callback_metrics, **getattr(pl_module, "epoch_means", dict)()}

    def _row(
        self, trainer: Trainer, pl_module: LightningModule, fig: LayerFigures, epoch: int
    ) -> EpochRow:
        metrics = self._metrics(trainer, pl_module)
        row: EpochRow = {
            "epoch": epoch,
            "step": trainer.global_step,
            "method": type(pl_module).__name__,
            "role": getattr(pl_module, "role", METHOD),
            "seed": self.seed,
        }
        for key in ("train/loss", "test/acc", "test/loss"):
            row[key] = float(metrics[key]) if key in metrics and epoch > 0 else None
        row.update(summarize(fig, self.init_h_norm or fig.h_norm, self.grad_floor))
        row["grad_floor"] = self.grad_floor
        row["growth_threshold"] = self.growth_threshold
        row["seconds"] = self.last_seconds
        return row

    def _write(self, trainer: Trainer, row: EpochRow) -> None:
        self.rows_through = row["epoch"]  # every rank: the checkpoint holds rank 0's state
        if trainer.is_global_zero:
            self._append(row)

    def _append(self, row: EpochRow) -> None:
        log = RunLog(self._run_dir)  # from setup: no collective in a rank-zero-only function
        log.append(row)
        if self.verbose:
            tqdm.write(self._table(row, log.rows_path))  # above any progress bar, not through it

    def _table(self, row: EpochRow, path: Path) -> str:
        acc = row["test/acc"]
        head = f"[faeval] epoch {row['epoch']}" + (" (init)" if row["epoch"] == 0 else "")
        if acc is not None:
            head += f"  train loss {row['train/loss']:.4f}  test acc {acc:.4f}"
        head += f"  max growth ×{row['growth']:.3g}"
        if row["growth"] > self.growth_threshold:
            head += f" > {self.growth_threshold:g} (a) FIRES"
        if row["floor_hit"]:
            head += f"  ‖g_L‖ < {self.grad_floor:g}: (b) FIRES, cosines UNMEASURABLE"
        if row["nonfinite"]:
            head += "  NON-FINITE activations or gradients"
        layers = range(len(row["h_norm"]))
        lines = [
            head,
            "  layer   " + "".join(f"{l:>9d}" for l in layers),
            "  ‖h_l‖   " + "".join(" " + _fmt(v) for v in row["h_norm"]),
            "  ‖g_l‖   " + "".join(" " + _fmt(v) for v in row["g_norm"]),
            "  cos     " + "".join("      n/a" if v is None else f" {v:+8.4f}" for v in row["cos"]),
        ]
        if row["epoch"] == 0:
            lines.append(
                f"  rows: {path}   TensorBoard: tensorboard --logdir {logs_root(path.parent)}"
            )
        return "\n".join(lines)


def logs_root(run_dir: Path) -> Path:
    """The folder to point TensorBoard at: the ``lightning_logs`` above the run, if any."""
    for parent in run_dir.parents:
        if parent.name == LOGS:
            return parent
    return run_dir.parent


def script_config(trainer: Trainer, pl_module: LightningModule, seed: int | None) -> dict | None:
    """The ``config.yaml`` that ``faeval fit`` would have written for a run built in Python
    (a method and data module of faeval's, or anyone's that record their class path), so
    that ``faeval audit RUN_DIR`` rebuilds it; None where it cannot be said: a network given
    built (its weights are in the checkpoint, its recipe nowhere), no data module, seeds
    stacked."""
    data = trainer.datamodule
    hparams = pl_module.hparams
    if data is None or CLASS_PATH not in hparams or CLASS_PATH not in data.hparams:
        return None
    if "backbone" not in hparams or getattr(pl_module, "stack_size", 1) != 1:
        return None
    return {
        "seed_everything": seed,
        "trainer": {"max_epochs": trainer.max_epochs},
        # input_shape and num_classes: the command line links them from the data
        "model": class_config(hparams, skip={"input_shape", "num_classes"}),
        "data": class_config(data.hparams),
    }
