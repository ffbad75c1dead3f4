"""The audit: the whole protocol recomputed on a trained method, and its verdict.

Plain functions: ``audit_model`` audits a method and its data as they are (from Python, after
``trainer.fit``); ``audit_checkpoint`` loads a saved run's checkpoint first and judges it with
the run's own history; ``write_audit`` and ``audit_text`` render a record. ``faeval audit``
(``faeval.trainer.FaevalTrainer.audit``) is a thin command over them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from faeval.data.contract import Batch, given_probe, network_batches, probe_batch
from faeval.diagnostics.layers import LayerFigures, full_precision, measure_layers
from faeval.errors import DataNotFoundError, FaevalError
from faeval.protocol.checkpoint import load_checkpoint, load_method_state
from faeval.protocol.measure import measure_protocol
from faeval.protocol.render import run_markdown, run_text
from faeval.protocol.settings import ProtocolSettings, Thresholds
from faeval.protocol.verdicts import RunVerdict, judge_run
from faeval.runlog import (
    DEPTH_BASELINE,
    METHOD,
    EpochRow,
    ProtocolRow,
    RunLog,
    read_rows,
    summarize,
)
from faeval.runs import folder_args
from faeval.seeding import resolve_seed

#: Where ``--train_frozen true`` keeps the baseline it trains, inside the audited run.
FROZEN_DIR = "frozen_baseline"
#: The method of the depth baseline, as the command line names it.
FROZEN_METHOD = "FrozenBlocks"


@dataclass
class AuditRecord:
    """What an audit found.

    Attributes:
        verdict: every verdict beside the standard pair.
        diagnostics: the audited epoch's row, recomputed (as ``diagnostics.jsonl`` writes it,
            with the test accuracy over the whole test split).
        protocol: the heavier pieces, as ``protocol.jsonl`` writes them.
        seconds: the cost of each part.
        checkpoint: the audited checkpoint, when there is one.
        run_dir: its run folder.
        frozen: the FrozenBlocks run that (d) compared against.
        frozen_epoch: that run's last epoch.
    """

    verdict: RunVerdict
    diagnostics: EpochRow
    protocol: ProtocolRow
    seconds: dict[str, float] = field(default_factory=dict)
    checkpoint: str | None = None
    run_dir: str | None = None
    frozen: str | None = None
    frozen_epoch: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON record ``write_audit`` writes."""
        return {
            "checkpoint": self.checkpoint,
            "run_dir": self.run_dir,
            "diagnostics": self.diagnostics,
            "protocol": self.protocol,
            "verdict": self.verdict.as_dict(),
            "frozen": self.frozen,
            "frozen_epoch": self.frozen_epoch,
            "seconds": self.seconds,
        }


@torch.no_grad()
def test_accuracy(method, datamodule, device: torch.device) -> float:
    """Accuracy over the data module's validation data (faeval's test split), in float32
    (float64 for a float64 model) with BatchNorm in eval mode."""
    correct = total = 0
    with full_precision(method, device.type) as dtype:
        for x, y in network_batches(datamodule, device):
            correct += (method(x.to(dtype)).argmax(1) == y).sum().item()
            total += len(y)
    return correct / total


def init_row(fig: LayerFigures, grad_floor: float) -> EpochRow:
    """Row 0 (the initialisation) from the figures of the untrained method."""
    return {"epoch": 0, "step": 0, **summarize(fig, fig.h_norm, grad_floor)}


def audit_model(
    method,
    datamodule=None,
    history: list[EpochRow] | None = None,
    *,
    probe: Batch | None = None,
    init_h_norm: list[float] | None = None,
    epoch: int | None = None,
    step: int | None = None,
    frozen_acc: float | None = None,
    thresholds: Thresholds = Thresholds(),
    settings: ProtocolSettings = ProtocolSettings(),
    seed: int | None = None,
) -> AuditRecord:
    """Audits a method on its data as it is now: every diagnostic, the protocol, the verdict.

    The Python entry to the protocol: after ``trainer.fit(method, datamodule=data)``,
    ``audit_model(method, data, RunLog(trainer.log_dir).rows())`` gives the figures and
    verdicts that ``faeval audit`` gives on that run's last checkpoint.

    Args:
        method: a trained ``CreditMethod`` (on the device it should be measured on).
        datamodule: its data: faeval's data module or any LightningDataModule with
            validation data (the probe and the test accuracy come from it). May be None
            when ``probe`` is given; the test accuracy, and so (d), is then unmeasured.
        history: the run's earlier diagnostics rows (row 0 the initialisation), e.g.
            ``RunLog(run_dir).rows()``: (a) judges the growth over all of them and (b) says
            when the floor was first crossed. A row of the audited epoch is replaced.
        probe: the probe batch (inputs, labels) instead of the data module's.
        init_h_norm: ‖h_l‖ at initialisation (default: row 0 of ``history``; without
            either, growth is measured against the figures now, i.e. reads ×1).
        epoch: the audited epoch (default: the last row's epoch when that row was written at
            the method's current step, as after ``trainer.fit``; else one after it).
        step: the audited global step (default: the method's trainer's, else 0).
        frozen_acc: test accuracy of the matching FrozenBlocks run, for (d).
        thresholds: the verdicts' thresholds.
        settings: the heavier pieces' settings.
        seed: the run's seed (default: the rows' seed).

    Returns:
        The record: ``record.verdict.verdicts`` by diagnostic (``a``, ``b``, ``c``, ``d``,
        ``mode2``), each with its status, figure and rule; ``write_audit`` writes it,
        ``audit_text`` prints it.

    Raises:
        ValueError: neither a data module with validation data nor a probe.
    """
    history = list(history or [])
    if step is None:
        step = method.global_step  # the trainer's step when attached, else 0
    if epoch is None:
        last = history[-1] if history else None
        epoch = 0 if last is None else last["epoch"] + (0 if last.get("step") == step else 1)
    past = [r for r in history if r.get("epoch") != epoch]
    device = next(method.parameters()).device
    if probe is None and datamodule is None:
        raise ValueError("audit_model needs the method's data module or a probe=(x, y) batch")
    x, y = given_probe(probe, device) if probe is not None else probe_batch(datamodule, device)
    start = time.perf_counter()
    fig = measure_layers(method, x, y)
    init = init_h_norm or (history[0]["h_norm"] if history else fig.h_norm)
    row: EpochRow = {
        "epoch": epoch,
        "step": step,
        "method": type(method).__name__,
        "role": getattr(method, "role", METHOD),
        "seed": seed if seed is not None else next((r.get("seed") for r in history), None),
        "test/acc": None if datamodule is None else test_accuracy(method, datamodule, device),
        **summarize(fig, init, thresholds.grad_floor),
    }
    seconds = {"diagnostics": time.perf_counter() - start}
    protocol: ProtocolRow = {"epoch": epoch, **measure_protocol(method, x, y, settings)}
    seconds.update(protocol["seconds"])
    verdict = judge_run([*past, row], protocol, row["method"], frozen_acc, thresholds, row["seed"])
    return AuditRecord(verdict, row, protocol, seconds)


def audit_checkpoint(
    ckpt_path: str | Path,
    method,
    datamodule,
    *,
    frozen: str | Path | None = None,
    train_frozen: bool = False,
    thresholds: Thresholds = Thresholds(),
    settings: ProtocolSettings = ProtocolSettings(),
    weights_only: bool = True,
) -> AuditRecord:
    """Audits a saved run at one of its checkpoints.

    ``method`` and ``datamodule`` are built from the run's configuration with the run's
    seed, so before the weights are loaded ``method`` is the run's initialisation: it is
    measured there when the run left no record of it.

    Args:
        ckpt_path: the checkpoint.
        method: the method built from the run's config (untrained).
        datamodule: the data built from the run's config.
        frozen: the matching FrozenBlocks run (its folder, a checkpoint or its rows) for (d).
        train_frozen: train that baseline (same config, seed and budget) when ``frozen`` is
            not given; it is kept in the run's ``frozen_baseline/``.
        thresholds: the verdicts' thresholds.
        settings: the heavier pieces' settings.
        weights_only: load without running pickled code; off only for a file you trust.

    Raises:
        FileNotFoundError: no checkpoint there, or no frozen rows where ``frozen`` points.
        ValueError: the file is not a readable faeval checkpoint, or another method's.
        RuntimeError: the checkpoint lacks its credit source (feedback, helper nets).
    """
    ckpt_file = Path(ckpt_path)
    ckpt = load_checkpoint(ckpt_file, weights_only=weights_only)
    run = RunLog(run_dir_of(ckpt_file))
    step = ckpt.get("global_step", 0)
    history = [r for r in run.rows() if r.get("step", 0) <= step]
    init_h = ckpt.get("callbacks", {}).get("Diagnostics", {}).get("init_h_norm")
    if init_h is None or not history:
        device = next(method.parameters()).device
        init = measure_layers(method, *probe_batch(datamodule, device))
        init_h = init_h or init.h_norm
        history = history or [init_row(init, thresholds.grad_floor)]
    load_method_state(method, ckpt, ckpt_file)
    last = history[-1]
    epoch = last["epoch"] if last.get("step") == step else ckpt.get("epoch", -1) + 1
    frozen_acc = frozen_epoch = None
    if getattr(method, "role", METHOD) != DEPTH_BASELINE:
        if frozen is None and train_frozen:
            frozen = fit_frozen_baseline(run.dir / "config.yaml", run.dir / FROZEN_DIR, epoch)
        if frozen is not None:
            frozen_acc, frozen_epoch = frozen_accuracy(frozen)
    record = audit_model(
        method,
        datamodule,
        history,
        init_h_norm=init_h,
        epoch=epoch,
        step=step,
        frozen_acc=frozen_acc,
        thresholds=thresholds,
        settings=settings,
        seed=resolve_seed(None),
    )
    record.checkpoint, record.run_dir = str(ckpt_file), str(run.dir)
    record.frozen = None if frozen is None else str(frozen)
    record.frozen_epoch = frozen_epoch
    return record


def audit_text(record: AuditRecord) -> str:
    """The console verdict of an audit, with its notes and cost."""
    text = run_text(record.verdict)
    epoch = record.verdict.epoch
    if record.frozen_epoch is not None and record.frozen_epoch != epoch:
        text += (
            f"\n  note: the frozen run ran {record.frozen_epoch} epochs, this run {epoch}: (d) "
            "compares different budgets"
        )
    sec = record.seconds
    return text + (
        f"\n  cost: diagnostics and accuracy {sec['diagnostics']:.2f} s, null band "
        f"{sec['null']:.2f} s, ρ {sec['rho']:.2f} s, stability {sec['stability']:.2f} s"
    )


def audit_markdown(record: AuditRecord) -> str:
    """The Markdown verdict of an audit."""
    what = f"`{record.checkpoint}`" if record.checkpoint else record.verdict.method
    return f"# faeval audit of {what}\n\n" + run_markdown(record.verdict)


def write_audit(record: AuditRecord, out_dir: str | Path, stem: str) -> tuple[Path, Path]:
    """Writes ``<stem>.audit.json`` and ``<stem>.audit.md`` into ``out_dir``.

    Returns:
        The two paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_file, md_file = out / f"{stem}.audit.json", out / f"{stem}.audit.md"
    json_file.write_text(json.dumps(record.as_dict(), indent=1))
    md_file.write_text(audit_markdown(record))
    return json_file, md_file


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
        raise DataNotFoundError(f"no checkpoint or run directory at {path}")
    found = sorted(path.glob("checkpoints/*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise DataNotFoundError(
            f"no checkpoints/*.ckpt under {path}; was it trained with checkpointing off?"
        )
    last = [p for p in found if p.name == "last.ckpt"]
    return (last or found)[-1]


def frozen_accuracy(path: str | Path) -> tuple[float, int | None]:
    """Test accuracy and epoch of a FrozenBlocks run, from its last diagnostics row.

    Args:
        path: the frozen run's directory, one of its checkpoints, or its diagnostics.jsonl.

    Raises:
        FileNotFoundError: no diagnostics rows with a test accuracy there.
    """
    path = Path(path)
    if path.suffix == ".jsonl":
        rows_file = path
    else:
        rows_file = RunLog(path if path.is_dir() else run_dir_of(path)).rows_path
    rows = [r for r in read_rows(rows_file) if r.get("test/acc") is not None]
    if not rows:
        raise DataNotFoundError(
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
    last = RunLog(out).last_row()
    if last is not None and last.get("epoch") == epochs:
        return out
    cmd = [
        sys.executable,
        "-m",
        "faeval",
        "fit",
        "--config",
        str(config),
        "--model",
        FROZEN_METHOD,
        "--trainer.max_epochs",
        str(epochs),
        *folder_args(out),
        "--diagnostics.verbose",
        "false",
    ]
    print(f"[faeval] training the FrozenBlocks baseline: {' '.join(cmd)}", flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise FaevalError(
            f"the FrozenBlocks baseline failed (exit {done.returncode}):\n{done.stderr[-2000:]}"
        )
    return out
