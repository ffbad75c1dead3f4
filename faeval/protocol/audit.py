"""``faeval audit``: the whole protocol, recomputed from a saved checkpoint, and its verdict.

The Trainer subclass carries the ``audit`` method that LightningCLI turns into a subcommand
(its parameters become options); the CLI builds the model and data from the run's
``config.yaml`` before calling it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer

from faeval.callbacks.diagnostics import ROWS_FILE, summarize
from faeval.diagnostics.probe import full_precision, measure
from faeval.methods.feedback import resolve_seed
from faeval.protocol.checkpoint import load_checkpoint, load_method_state
from faeval.protocol.measure import ProtocolSettings, run_protocol
from faeval.protocol.render import run_markdown, run_text
from faeval.protocol.verdicts import FROZEN, Thresholds, judge_run

FROZEN_DIR = "frozen_baseline"


def run_dir_of(ckpt_path: str | Path) -> Path:
    """The run directory of a checkpoint: the folder above ``checkpoints/``."""
    ckpt_path = Path(ckpt_path)
    return ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent


def find_checkpoint(path: str | Path) -> Path:
    """``path`` itself when it is a file, else the newest checkpoint of the run dir ``path``.

    Raises:
        FileNotFoundError: nothing at ``path``, or a run dir without checkpoints.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint or run directory at {path}")
    found = sorted(path.glob("checkpoints/*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(
            f"no checkpoints/*.ckpt under {path}; was it trained with checkpointing off?"
        )
    last = [p for p in found if p.name == "last.ckpt"]
    return (last or found)[-1]


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The JSON rows of a ``.jsonl`` file ([] when absent)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def frozen_accuracy(path: str | Path) -> tuple[float, int | None]:
    """Test accuracy and epoch of a FrozenBlocks run, from its last diagnostics row.

    Args:
        path: the frozen run's directory, one of its checkpoints, or its diagnostics.jsonl.

    Raises:
        FileNotFoundError: no diagnostics rows with a test accuracy there.
    """
    path = Path(path)
    rows_file = (
        path
        if path.suffix == ".jsonl"
        else (path / ROWS_FILE if path.is_dir() else run_dir_of(path) / ROWS_FILE)
    )
    rows = [r for r in read_rows(rows_file) if r.get("test/acc") is not None]
    if not rows:
        raise FileNotFoundError(
            f"no test accuracy in {rows_file}; pass the directory of a "
            "finished FrozenBlocks run, or --train_frozen true"
        )
    return float(rows[-1]["test/acc"]), rows[-1].get("epoch")


def fit_frozen_baseline(config: Path, out: Path, epochs: int) -> Path:
    """Trains the FrozenBlocks baseline of a run: same config, seed and data, ``epochs`` epochs.

    A baseline already finished in ``out`` is reused.

    Raises:
        RuntimeError: the training process failed.
    """
    if frozen_done(out, epochs):
        return out
    cmd = [
        sys.executable,
        "-m",
        "faeval",
        "fit",
        "--config",
        str(config),
        "--model",
        FROZEN,
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.logger",
        "TensorBoardLogger",
        "--trainer.logger.save_dir",
        str(out),
        "--trainer.logger.name",
        "",
        "--trainer.logger.version",
        "",
        "--trainer.enable_progress_bar",
        "false",
        "--diagnostics.verbose",
        "false",
    ]
    print(f"[faeval] training the FrozenBlocks baseline: {' '.join(cmd)}", flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(
            f"the FrozenBlocks baseline failed (exit {done.returncode}):\n{done.stderr[-2000:]}"
        )
    return out


def frozen_done(out: Path, epochs: int) -> bool:
    rows = read_rows(out / ROWS_FILE)
    return bool(rows) and rows[-1].get("epoch") == epochs


@torch.no_grad()
def test_accuracy(model, datamodule, device: torch.device) -> float:
    """Accuracy over the data module's test split, in float32 with BatchNorm in eval mode."""
    correct = total = 0
    with full_precision(model, device.type):
        for x, y in datamodule.val_dataloader():
            x, y = datamodule.normalize(x.to(device)), y.to(device)
            correct += (model(x.float()).argmax(1) == y).sum().item()
            total += len(y)
    return correct / total


class FaevalTrainer(Trainer):
    """Lightning's Trainer with faeval's ``audit`` subcommand."""

    def audit(
        self,
        model,
        datamodule=None,
        ckpt_path: str | None = None,
        weights_only: bool | None = None,
        frozen: str | None = None,
        train_frozen: bool = False,
        growth_threshold: float = 50.0,
        grad_floor: float = 1e-7,
        stability_threshold: float = 0.1,
        margin: float = 0.02,
        null_sigmas: float = 2.0,
        null_draws: int = 8,
        directions: int = 32,
        epsilon: float = 1e-3,
        negative_draws: int = 8,
        stability_batches: int = 8,
        stability_batch_size: int = 128,
        out_dir: str | None = None,
    ) -> dict[str, Any]:
        """Recompute every diagnostic of a saved run and print its verdict.

        Usage: ``faeval audit RUN_DIR_OR_CKPT [options]`` (the run's config.yaml rebuilds the
        model and data), or ``faeval audit --config RUN/config.yaml --ckpt_path CKPT``.
        Writes ``<checkpoint>.audit.json`` and ``.audit.md`` next to the checkpoint.

        Args:
            model: the method, built from the run's config (LightningCLI passes it).
            datamodule: the data, built from the run's config (LightningCLI passes it).
            ckpt_path: the checkpoint to audit.
            weights_only: load without running pickled code (default true); false only for a
                file you trust.
            frozen: the matching FrozenBlocks run (its directory or checkpoint) for (d).
            train_frozen: train the FrozenBlocks baseline with this run's config, seed and
                budget when no ``frozen`` run is given (kept under the run's
                ``frozen_baseline/``).
            growth_threshold: (a) fires above this growth factor.
            grad_floor: (b) fires when ‖g_L‖ is below it.
            stability_threshold: (c) reads FIRES below it (advisory).
            margin: (d) fires when accuracy − frozen accuracy is below it (0.02 = 2 pp).
            null_sigmas: Mode 2 fires unless the deep cosine clears null mean + this many std.
            null_draws: K, fresh feedback draws of the null band.
            directions: M, random directions per sample for ρ.
            epsilon: ε, the step of ρ.
            negative_draws: random credits of ρ's negative control.
            stability_batches: probe batches of (c).
            stability_batch_size: samples per batch of (c).
            out_dir: where to write the verdict files (default: beside the checkpoint).

        Returns:
            The audit record written as JSON.

        Raises:
            ValueError: no checkpoint given, or it is not a readable faeval checkpoint.
            RuntimeError: the checkpoint lacks its credit source (feedback, helper nets).
        """
        if ckpt_path is None:
            raise ValueError(
                "faeval audit needs a checkpoint: faeval audit RUN_DIR_OR_CKPT, or "
                "--ckpt_path CKPT with the run's --config"
            )
        thresholds = Thresholds(
            growth_threshold, grad_floor, stability_threshold, margin, null_sigmas
        )
        settings = ProtocolSettings(
            null_draws=null_draws,
            directions=directions,
            epsilon=epsilon,
            negative_draws=negative_draws,
            stability_batches=stability_batches,
            stability_batch_size=stability_batch_size,
        )
        ckpt_file = Path(ckpt_path)
        ckpt = load_checkpoint(ckpt_file, weights_only=weights_only is not False)
        run_dir = run_dir_of(ckpt_file)
        device = self.strategy.root_device
        model = model.to(device)
        datamodule.setup("validate")
        x, y = datamodule.probe(device)
        start = time.perf_counter()

        history = [
            r
            for r in read_rows(run_dir / ROWS_FILE)
            if r.get("step", 0) <= ckpt.get("global_step", 0)
        ]
        init_h = ckpt.get("callbacks", {}).get("Diagnostics", {}).get("init_h_norm")
        # Only when the run left no record of it: the config's seed rebuilds the initialisation.
        init = measure(model, x, y) if init_h is None or not history else None
        load_method_state(model, ckpt, ckpt_file)
        fig = measure(model, x, y)
        acc = test_accuracy(model, datamodule, device)
        epoch = (
            history[-1]["epoch"]
            if history and history[-1].get("step") == ckpt.get("global_step")
            else ckpt.get("epoch", -1) + 1
        )
        row = {
            "epoch": epoch,
            "step": ckpt.get("global_step"),
            "test/acc": acc,
            **summarize(fig, init_h or init.h_norm, grad_floor),
        }
        if not history:
            history = [{"epoch": 0, **summarize(init, init.h_norm, grad_floor)}]
        elif history[-1]["epoch"] == epoch:
            history = history[:-1]
        seconds_diag = time.perf_counter() - start
        proto = {"epoch": epoch, **run_protocol(model, x, y, settings)}

        frozen_acc = frozen_epoch = None
        method = type(model).__name__
        if method != FROZEN:
            if frozen is None and train_frozen:
                frozen = str(
                    fit_frozen_baseline(run_dir / "config.yaml", run_dir / FROZEN_DIR, epoch)
                )
            if frozen is not None:
                frozen_acc, frozen_epoch = frozen_accuracy(frozen)
        seed = resolve_seed(None)
        verdict = judge_run([*history, row], proto, method, frozen_acc, thresholds, seed)
        text = run_text(verdict)
        if frozen_epoch is not None and frozen_epoch != epoch:
            text += (
                f"\n  note: the frozen run ran {frozen_epoch} epochs, this run {epoch}: (d) "
                "compares different budgets"
            )
        cost = proto["seconds"]
        text += (
            f"\n  cost: diagnostics and accuracy {seconds_diag:.2f} s, null band "
            f"{cost['null']:.2f} s, ρ {cost['rho']:.2f} s, stability "
            f"{cost['stability']:.2f} s"
        )
        record = {
            "checkpoint": str(ckpt_file),
            "run_dir": str(run_dir),
            "diagnostics": row,
            "protocol": proto,
            "verdict": verdict.as_dict(),
            "frozen": frozen,
            "frozen_epoch": frozen_epoch,
        }
        out = Path(out_dir) if out_dir else ckpt_file.parent
        out.mkdir(parents=True, exist_ok=True)
        json_file = out / f"{ckpt_file.stem}.audit.json"
        md_file = out / f"{ckpt_file.stem}.audit.md"
        json_file.write_text(json.dumps(record, indent=1))
        md_file.write_text(f"# faeval audit of `{ckpt_file}`\n\n" + run_markdown(verdict))
        print(text + f"\n  written: {json_file}, {md_file}", flush=True)
        return record
