"""The protocol callback: the heavier pieces (null band, ρ, stability) every few epochs."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from tqdm import tqdm
from typing_extensions import override

from faeval.callbacks.diagnostics import append_row
from faeval.protocol.measure import ProtocolSettings, run_protocol

PROTOCOL_FILE = "protocol.jsonl"


def protocol_metrics(row: dict[str, Any]) -> dict[str, float]:
    """The logger's view of a protocol row (pure function): ``protocol/...`` scalars."""
    out: dict[str, float] = {}
    null = row.get("null")
    if null is not None:
        out["protocol/cos_deep"] = null["deep"]
        out["protocol/null_deep_mean"] = null["deep_mean"]
        out["protocol/null_deep_std"] = null["deep_std"]
    rho = row["rho"]
    for layer, v in enumerate(rho["rho"]):
        out[f"protocol/rho/l{layer}"] = v
    deep = slice(1, None)
    for name, values in (
        ("rho_deep", rho["rho"]),
        ("rho_positive_deep", rho["positive"]),
        ("rho_negative_deep", rho["negative_mean"]),
    ):
        vals = values[deep]
        out[f"protocol/{name}"] = sum(vals) / len(vals) if vals else math.nan
    if row.get("stability"):
        out["protocol/stability"] = row["stability"]["credit"]
        out["protocol/stability_gradient"] = row["stability"]["gradient"]
    out["protocol/seconds"] = sum(row["seconds"].values())
    return out


class Protocol(Callback):
    """Runs the protocol's heavier pieces every ``every_n_epochs`` epochs and at the end.

    The pieces: the null band of Mode 2 (K fresh feedback draws), the perturbation
    correlation ρ with its positive (a = g) and negative (random a) controls, and direction
    stability (diagnostic (c)) at layer L/2. Each pass is logged as ``protocol/...`` metrics,
    appended as one JSON row to ``protocol.jsonl`` beside ``diagnostics.jsonl``, and its cost
    printed in seconds and in epochs. Add it with ``--trainer.callbacks+=Protocol``.

    Args:
        every_n_epochs: measure every n epochs; the last epoch is always measured.
        null_draws: K, fresh feedback draws of the null band.
        directions: M, random directions per sample for ρ.
        epsilon: ε, the step of ρ.
        negative_draws: random credits of ρ's negative control.
        stability_batches: probe batches of diagnostic (c) (the protocol asks for ≥ 8).
        stability_batch_size: samples per batch of diagnostic (c) (128 in the protocol).
        verbose: print the figures and their cost every pass.
    """

    def __init__(
        self,
        every_n_epochs: int = 5,
        null_draws: int = 8,
        directions: int = 32,
        epsilon: float = 1e-3,
        negative_draws: int = 8,
        stability_batches: int = 8,
        stability_batch_size: int = 128,
        verbose: bool = True,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.settings = ProtocolSettings(
            null_draws=null_draws,
            directions=directions,
            epsilon=epsilon,
            negative_draws=negative_draws,
            stability_batches=stability_batches,
            stability_batch_size=stability_batch_size,
        )
        self.verbose = verbose
        self.measured_epoch: int | None = None
        self._epoch_start = 0.0
        self._epoch_seconds = math.nan

    def rows_path(self, trainer: Trainer) -> Path:
        return Path(trainer.log_dir or trainer.default_root_dir) / PROTOCOL_FILE

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
        for name, value in protocol_metrics(row).items():
            pl_module.log(name, value)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch  # epochs completed; a run stopped early ends here
        if epoch == self.measured_epoch or epoch == 0:
            return
        row = self._measure(trainer, pl_module, epoch)
        if trainer.logger is not None:
            trainer.logger.log_metrics(protocol_metrics(row), step=trainer.global_step)

    def _measure(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> dict[str, Any]:
        x, y = trainer.datamodule.probe(pl_module.device)
        row = {"epoch": epoch, "step": trainer.global_step}
        row.update(run_protocol(pl_module, x, y, self.settings))
        row["epoch_seconds"] = self._epoch_seconds
        self.measured_epoch = epoch
        self._write(trainer, row)
        return row

    @rank_zero_only
    def _write(self, trainer: Trainer, row: dict[str, Any]) -> None:
        append_row(self.rows_path(trainer), row)
        if self.verbose:
            tqdm.write(self._summary(row))  # above any progress bar

    @staticmethod
    def _summary(row: dict[str, Any]) -> str:
        sec = row["seconds"]
        total = sum(sec.values())
        per_epoch = row["epoch_seconds"]
        ratio = (
            f" = {total / per_epoch:.2f} epochs of {per_epoch:.2f} s"
            if math.isfinite(per_epoch) and per_epoch > 0
            else ""
        )
        m = protocol_metrics(row)
        parts = [f"[faeval] protocol at epoch {row['epoch']}:"]
        if row.get("null") is not None:
            n = row["null"]
            parts.append(
                f"deep cos {n['deep']:+.3f} vs null {n['deep_mean']:+.3f} ± {n['deep_std']:.3f}"
            )
        else:
            parts.append("null band n/a (no feedback draw)")
        parts.append(
            f"ρ deep {m['protocol/rho_deep']:+.3f} (a=g "
            f"{m['protocol/rho_positive_deep']:+.3f}, random "
            f"{m['protocol/rho_negative_deep']:+.3f})"
        )
        if row.get("stability"):
            parts.append(f"stability {row['stability']['credit']:+.3f}")
        cost = (
            f"  cost {total:.2f} s (null {sec['null']:.2f}, ρ {sec['rho']:.2f}, "
            f"stability {sec['stability']:.2f}){ratio}"
        )
        return "  ".join(parts) + "\n" + cost
