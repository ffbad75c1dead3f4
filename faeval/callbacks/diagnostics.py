"""The per-epoch diagnostics callback: gathers tensors, calls ``faeval.diagnostics``, logs."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from tqdm import tqdm
from typing_extensions import override

from faeval.diagnostics.probe import LayerFigures, measure

ROWS_FILE = "diagnostics.jsonl"

# TensorBoard custom-scalar layout: each family, all layers, in one chart.
LAYOUT = {
    "faeval: watch ‖h_L‖ and ‖g_L‖ first": {
        "‖h_L‖ and ‖g_L‖": ["Multiline", [r"diag/h_L$", r"diag/g_L$"]],
        "max growth ‖h_l‖ / ‖h_l‖ at init": ["Multiline", [r"diag/growth$"]],
        "test accuracy": ["Multiline", [r"test/acc$"]],
    },
    "faeval: per layer": {
        "‖h_l‖": ["Multiline", [r"diag/h_norm/l\d+"]],
        "‖g_l‖": ["Multiline", [r"diag/g_norm/l\d+"]],
        "cos(a_l, g_l)": ["Multiline", [r"diag/cos/l\d+"]],
        "‖h_l‖ / ‖h_{l-1}‖": ["Multiline", [r"diag/h_ratio/l\d+"]],
    },
}


def summarize(fig: LayerFigures, init_h_norm: list[float], grad_floor: float) -> dict[str, Any]:
    """The epoch's row: per-layer figures plus the derived flags (pure function).

    Cosines are replaced by None where they cannot be trusted: every layer while the
    gradient floor (diagnostic (b), ‖g_L‖ < grad_floor or non-finite) fires, and any layer
    whose own ‖g_l‖ is under the floor.
    """
    g_last = fig.g_norm[-1]
    floor_hit = not (math.isfinite(g_last) and g_last >= grad_floor)
    cos = [
        None if floor_hit or not g >= grad_floor else c
        for c, g in zip(fig.cos, fig.g_norm, strict=True)
    ]
    growth = [h / h0 for h, h0 in zip(fig.h_norm, init_h_norm, strict=True)]
    deep = [c for c in cos[1:] if c is not None]
    measured = [c for c in cos if c is not None]
    return {
        "h_norm": fig.h_norm,
        "g_norm": fig.g_norm,
        "cos": cos,
        "h_ratio": [h / hp for hp, h in zip(fig.h_norm[:-1], fig.h_norm[1:], strict=True)],
        "growth": max(growth, key=lambda v: v if math.isfinite(v) else math.inf),
        "h_L": fig.h_norm[-1],
        "g_L": g_last,
        "floor_hit": floor_hit,
        "nonfinite": not all(math.isfinite(v) for v in fig.h_norm + fig.g_norm),
        "cos_l0": cos[0],
        "cos_deep": sum(deep) / len(deep) if len(deep) == len(cos) - 1 else None,
        "gamma": sum(measured) / len(measured) if len(measured) == len(cos) else None,
        "probe_loss": fig.loss,
        "probe_acc": fig.acc,
    }


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Appends one JSON row to a run's ``.jsonl`` file (creating the folder if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def _fmt(v: float | None) -> str:
    return "    n/a " if v is None else f"{v:8.1e}"


class Diagnostics(Callback):
    """Measures ‖h_l‖, ‖g_l‖ and cos(a_l, g_l) on the fixed probe batch every epoch.

    The figures go to the logger as ``diag/h_norm/l{l}``, ``diag/g_norm/l{l}``,
    ``diag/cos/l{l}`` and ``diag/h_ratio/l{l}``, with ``diag/h_L``, ``diag/g_L``,
    ``diag/growth`` (largest ‖h_l‖ now / at initialisation), ``diag/floor`` (1 while
    diagnostic (b) fires), and, one JSON row per epoch, to ``diagnostics.jsonl`` in the run
    directory (row 0 is the initialisation). Cosines are logged as NaN and written as null
    while they are unmeasurable. Diagnostics run in float32 with autocast off and BatchNorm
    in eval mode, whatever the training precision.

    Args:
        grad_floor: the floor of diagnostic (b) on ‖g_L‖.
        growth_threshold: the threshold of diagnostic (a) on the largest growth factor
            (printed as a warning; the verdict belongs to the protocol).
        every_n_epochs: measure every n epochs (and always after the last one).
        verbose: print a per-layer table every time it measures.
    """

    def __init__(
        self,
        grad_floor: float = 1e-7,
        growth_threshold: float = 50.0,
        every_n_epochs: int = 1,
        verbose: bool = True,
    ) -> None:
        if grad_floor <= 0 or growth_threshold <= 0 or every_n_epochs < 1:
            raise ValueError(
                f"Diagnostics needs grad_floor > 0, growth_threshold > 0 and "
                f"every_n_epochs >= 1, got {grad_floor}, {growth_threshold}, {every_n_epochs}"
            )
        self.grad_floor = grad_floor
        self.growth_threshold = growth_threshold
        self.every_n_epochs = every_n_epochs
        self.verbose = verbose
        self.init_h_norm: list[float] | None = None
        self.last_seconds = 0.0
        self._probe = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"init_h_norm": self.init_h_norm}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.init_h_norm = state_dict["init_h_norm"]

    def rows_path(self, trainer: Trainer) -> Path:
        return Path(trainer.log_dir or trainer.default_root_dir) / ROWS_FILE

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._probe = trainer.datamodule.probe(pl_module.device)
        if isinstance(trainer.logger, TensorBoardLogger) and trainer.is_global_zero:
            trainer.logger.experiment.add_custom_scalars(LAYOUT)
        if self.init_h_norm is None:  # a fresh run; a resumed one restored it
            fig = measure(pl_module, *self._probe)
            self.init_h_norm = fig.h_norm
            row = self._row(trainer, pl_module, fig, epoch=0)
            if trainer.logger is not None:
                trainer.logger.log_metrics(self._metrics(row), step=0)
            self._write(trainer, row)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch + 1  # epochs completed
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if epoch % self.every_n_epochs and not last:
            return
        start = time.perf_counter()
        fig = measure(pl_module, *self._probe)
        self.last_seconds = time.perf_counter() - start
        row = self._row(trainer, pl_module, fig, epoch)
        for name, value in self._metrics(row).items():
            pl_module.log(name, value)
        self._write(trainer, row)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.verbose and trainer.is_global_zero:
            path = self.rows_path(trainer)
            tqdm.write(
                f"[faeval] run folder {path.parent}: {ROWS_FILE} (one row per epoch), "
                f"config.yaml, checkpoints/; TensorBoard: tensorboard --logdir "
                f"{path.parent.parent}"
            )

    def _row(
        self, trainer: Trainer, pl_module: LightningModule, fig: LayerFigures, epoch: int
    ) -> dict[str, Any]:
        # The method logs its epoch means after this callback runs: ask it for them directly.
        metrics = {**trainer.callback_metrics, **getattr(pl_module, "epoch_means", dict)()}
        row = {"epoch": epoch, "step": trainer.global_step}
        for key in ("train/loss", "test/acc", "test/loss"):
            row[key] = float(metrics[key]) if key in metrics and epoch > 0 else None
        row.update(summarize(fig, self.init_h_norm or fig.h_norm, self.grad_floor))
        row["grad_floor"] = self.grad_floor
        row["seconds"] = self.last_seconds
        return row

    @staticmethod
    def _metrics(row: dict[str, Any]) -> dict[str, float]:
        out = {}
        for family in ("h_norm", "g_norm", "cos"):
            for l, v in enumerate(row[family]):
                out[f"diag/{family}/l{l}"] = math.nan if v is None else v
        for l, v in enumerate(row["h_ratio"], start=1):
            out[f"diag/h_ratio/l{l}"] = v
        for key in ("h_L", "g_L", "growth", "probe_acc", "probe_loss"):
            out[f"diag/{key}"] = row[key]
        out["diag/floor"] = float(row["floor_hit"])
        return out

    @rank_zero_only
    def _write(self, trainer: Trainer, row: dict[str, Any]) -> None:
        path = self.rows_path(trainer)
        append_row(path, row)
        if self.verbose:
            tqdm.write(self._table(row, path))  # above any progress bar, not through it

    def _table(self, row: dict[str, Any], path: Path) -> str:
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
            lines.append(f"  rows: {path}   TensorBoard: tensorboard --logdir {path.parent.parent}")
        return "\n".join(lines)
