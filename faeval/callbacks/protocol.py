"""The protocol callback: the heavier pieces (null band, ρ, stability) every few epochs."""

from __future__ import annotations

import math
import time
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from tqdm import tqdm
from typing_extensions import override

from faeval.callbacks.diagnostics import Diagnostics
from faeval.data.contract import trainer_probe
from faeval.errors import ConfigError
from faeval.protocol.measure import measure_protocol
from faeval.protocol.settings import ProtocolSettings
from faeval.runlog import (
    ProtocolRow,
    RunLog,
    deep_mean,
    fmt,
    keep_rows_through,
    protocol_scalars,
)


class Protocol(Callback):
    """Runs the protocol's heavier pieces every ``every_n_epochs`` epochs and at the end.

    The pieces: the null band of Mode 2 (K fresh feedback draws), the perturbation
    correlation ρ with its positive (a = g) and negative (random a) controls, and direction
    stability (diagnostic (c)) at layer L/2. Each pass is logged as ``protocol/...`` metrics,
    appended as one JSON row to ``protocol.jsonl`` beside ``diagnostics.jsonl``, and its cost
    printed in seconds and in epochs. Add it with ``--trainer.callbacks+=Protocol``.

    Args:
        every_n_epochs: measure every n epochs; the last epoch is always measured.
        settings: the pieces' settings (``--trainer.callbacks.settings.null_draws 8`` …).
        verbose: print the figures and their cost every pass.
    """

    def __init__(
        self,
        every_n_epochs: int = 5,
        settings: ProtocolSettings = ProtocolSettings(),
        verbose: bool = True,
    ) -> None:
        if every_n_epochs < 1:
            raise ConfigError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.settings = settings
        self.verbose = verbose
        self.measured_epoch: int | None = None
        self._run_dir: Path | None = None
        self._resumed = False
        self._epoch_start = 0.0
        self._epoch_seconds = math.nan

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # trainer.log_dir is a collective under DDP: every rank, once, never in _write.
        self._run_dir = Path(trainer.log_dir or trainer.default_root_dir)

    @override
    def state_dict(self) -> dict:
        return {"measured_epoch": self.measured_epoch}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self.measured_epoch = state_dict.get("measured_epoch")
        self._resumed = True

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._resumed and trainer.is_global_zero:
            # Resumed: rows of work after the checkpoint (redone now) and a torn line go.
            last = -1 if self.measured_epoch is None else self.measured_epoch
            keep_rows_through(RunLog(self._run_dir).protocol_path, last)

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_seconds = time.perf_counter() - self._epoch_start
        epoch = trainer.current_epoch + 1  # epochs completed
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if epoch % self.every_n_epochs and not last:
            return
        row = self._measure(trainer, pl_module, epoch)
        scalars = protocol_scalars(row)
        for name, value in scalars.items():
            pl_module.log(name, value, logger=False, sync_dist=True)  # equal on every rank
        if trainer.logger is not None:
            trainer.logger.log_metrics(scalars, step=epoch)  # x = epoch, as the diagnostics

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch  # epochs completed; a run stopped early ends here
        if epoch == self.measured_epoch or epoch == 0:
            return
        row = self._measure(trainer, pl_module, epoch)
        if trainer.logger is not None:
            trainer.logger.log_metrics(protocol_scalars(row), step=epoch)

    def _measure(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> ProtocolRow:
        # The same probe as the Diagnostics callback's: its explicit one, else the data's.
        given = next((c.probe for c in trainer.callbacks if isinstance(c, Diagnostics)), None)
        x, y = trainer_probe(trainer, pl_module.device, given)
        row: ProtocolRow = {"epoch": epoch, "step": trainer.global_step}
        if trainer.is_global_zero:  # one measurement for every rank (same weights, probe)
            row.update(measure_protocol(pl_module, x, y, self.settings))
        row = trainer.strategy.broadcast(row, src=0)
        row["epoch_seconds"] = self._epoch_seconds
        self.measured_epoch = epoch
        self._write(trainer, row)
        return row

    @rank_zero_only
    def _write(self, trainer: Trainer, row: ProtocolRow) -> None:
        RunLog(self._run_dir).append_protocol(row)
        if self.verbose:
            tqdm.write(self._summary(row))  # above any progress bar

    @staticmethod
    def _summary(row: ProtocolRow) -> str:
        sec = row["seconds"]
        total = sum(sec.values())
        per_epoch = row["epoch_seconds"]
        ratio = (
            f" = {total / per_epoch:.2f} epochs of {per_epoch:.2f} s"
            if math.isfinite(per_epoch) and per_epoch > 0
            else ""
        )
        parts = [f"[faeval] protocol at epoch {row['epoch']}:"]
        if row.get("null") is not None:
            n = row["null"]
            parts.append(
                f"deep cos {fmt(n['deep'], '+.3f')} vs null {fmt(n['deep_mean'], '+.3f')} ± "
                f"{fmt(n['deep_std'], '.3f')}"
            )
        else:
            parts.append("null band n/a (no feedback draw)")
        rho = row["rho"]
        parts.append(
            f"ρ deep {fmt(deep_mean(rho['rho']), '+.3f')} (a=g "
            f"{fmt(deep_mean(rho['positive']), '+.3f')}, random "
            f"{fmt(deep_mean(rho['negative_mean']), '+.3f')})"
        )
        if row.get("stability"):
            parts.append(f"stability {row['stability']['credit']:+.3f}")
        cost = (
            f"  cost {total:.2f} s (null {sec['null']:.2f}, ρ {sec['rho']:.2f}, "
            f"stability {sec['stability']:.2f}){ratio}"
        )
        return "  ".join(parts) + "\n" + cost
