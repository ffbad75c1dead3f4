"""A run counts as done only when it trained its planned epochs or recorded why it stopped:
signals, kills and NaN runs, each recorded as what it is, and continued from last.ckpt."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from faeval.cli import run
from faeval.runend import read_end
from faeval.runlog import read_rows
from tests.helpers import TINY_RUN

pytestmark = [pytest.mark.slow]

#: 3 epochs of 4 steps, last.ckpt after every step; Throttle makes each step take 0.3 s.
ARGS = [*TINY_RUN, "--trainer.max_epochs", "3", "--checkpoint_every_n_steps", "1"]
THROTTLE = ["--trainer.callbacks+=tests.helpers.Throttle", "--trainer.callbacks.seconds", "0.3"]
SPEC = {"seeds": [0], "methods": ["DFA"], "protocol": False, "args": [*ARGS, *THROTTLE]}


def start_sweep(spec: Path, out: Path) -> subprocess.Popen:
    """``faeval sweep`` in a process of its own (its signals are not pytest's)."""
    cmd = [sys.executable, "-m", "faeval", "sweep", str(spec), "--out", str(out), "--stack", "1"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_epoch(run_dir: Path, epoch: int, sweep: subprocess.Popen) -> None:
    """Until ``run_dir`` has written the row of ``epoch`` (and the next step's checkpoint)."""
    deadline = time.monotonic() + 300
    while len(read_rows(run_dir / "diagnostics.jsonl")) < epoch + 1:
        assert sweep.poll() is None, sweep.communicate()[0]
        assert time.monotonic() < deadline, "the run never trained"
        time.sleep(0.1)
    time.sleep(0.8)  # a step or two into the next epoch: the stop comes mid-epoch


def training_pid(run_dir: Path) -> int:
    """The pid of the process training the run (its claim file records it)."""
    return json.loads((run_dir / "faeval_run.json").read_text())["pid"]


def results(out: Path) -> dict[str, dict]:
    with (out / "results.csv").open() as fh:
        return {r["method"]: r for r in csv.DictReader(fh)}


def straight_weights(tmp_path: Path) -> dict[str, torch.Tensor]:
    cli = run(["fit", "--model", "DFA", "--seed_everything", "0", *ARGS,
               "--trainer.default_root_dir", str(tmp_path / "straight")])  # fmt: skip
    return cli.model.state_dict()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL", "sweep SIGTERM"])
def test_a_run_stopped_mid_epoch_is_interrupted_and_continues_to_an_uninterrupted_runs_weights(
    tmp_path, how
):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "out"
    run_dir = out / "runs" / "default" / "DFA" / "seed0"
    sweep = start_sweep(spec, out)
    wait_for_epoch(run_dir, 1, sweep)
    if how == "sweep SIGTERM":  # the sweep passes it on to every run
        sweep.send_signal(signal.SIGTERM)
    else:
        os.kill(training_pid(run_dir), getattr(signal, how))
    printed = sweep.communicate(timeout=300)[0]
    assert sweep.returncode == (128 + signal.SIGTERM if how == "sweep SIGTERM" else 1), printed
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted", status
    assert results(out)["DFA"]["status"] == "interrupted"
    if how == "SIGKILL":
        assert read_end(run_dir) is None and status["ended"] == "killed by SIGKILL"
    else:  # the run said so itself, though Lightning's process exits 0 on SIGTERM
        assert read_end(run_dir)["state"] == "interrupted" and "SIGTERM" in status["ended"]
    rows = read_rows(run_dir / "diagnostics.jsonl")
    assert 1 <= rows[-1]["epoch"] < 3
    results_before = {m: r["status"] == "interrupted" for m, r in results(out).items()}

    # Started again: it continues from last.ckpt to the planned epochs, each row once.
    again = start_sweep(spec, out)
    printed = again.communicate(timeout=300)[0]
    assert again.returncode == 0, printed
    # (SIGTERM to the sweep stopped FrozenBlocks' run too: it continues as well)
    continuing = 2 if how == "sweep SIGTERM" and results_before["FrozenBlocks"] else 1
    assert f"({continuing} continuing from their last checkpoint)" in printed
    row = results(out)["DFA"]
    assert row["status"] == "ok" and row["continued"] == "1" and row["epochs"] == "3"
    assert read_end(run_dir)["state"] == "finished"
    assert [r["epoch"] for r in read_rows(run_dir / "diagnostics.jsonl")] == [0, 1, 2, 3]
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    want = straight_weights(tmp_path)
    assert final.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(final[key], value), key


def test_a_run_whose_loss_goes_nan_is_diverged_and_its_rows_are_strict_json(tmp_path, capsys):
    from faeval.study import sweep

    spec = {"seeds": [0], "methods": ["BP"], "protocol": False,
            "args": [*TINY_RUN, "--trainer.max_epochs", "3", "--model.optimizer", "SGD",
                     "--model.optimizer.lr", "1e30"]}  # fmt: skip
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    code = sweep.main([str(tmp_path / "spec.yaml"), "--out", str(out), "--stack", "1"])
    printed = capsys.readouterr().out
    run_dir = out / "runs" / "default" / "BP" / "seed0"
    assert read_end(run_dir)["state"] == "diverged", printed
    assert results(out)["BP"]["status"] == "diverged"
    # (FrozenBlocks trains its readout at the same rate: it may diverge too, as it recorded)
    frozen = read_end(out / "runs" / "default" / "FrozenBlocks" / "seed0")["state"]
    assert results(out)["FrozenBlocks"]["status"] == ("ok" if frozen == "finished" else frozen)
    assert code == 0  # diverged is an outcome, not a failure of the sweep

    def refuse(constant: str):
        raise ValueError(f"bare {constant} in a row")

    for path in out.rglob("*.jsonl"):
        for line in path.read_text().splitlines():
            json.loads(line, parse_constant=refuse)
    for path in out.rglob("status.json"):
        json.loads(path.read_text(), parse_constant=refuse)
    rows = read_rows(run_dir / "diagnostics.jsonl")
    bad = rows[-1]
    assert bad["epoch"] < 3  # it stopped there
    assert bad["train/loss"] is None and "train/loss" in bad["nonfinite_figures"]

    # Started again, a diverged run is not trained again.
    assert sweep.main([str(tmp_path / "spec.yaml"), "--out", str(out), "--stack", "1"]) == 0
    diverged = 1 + (frozen == "diverged")
    assert f"2 runs: {2 - diverged} finished, {diverged} diverged, 0 to run" in (
        capsys.readouterr().out
    )

    # The report lists it apart, with when and why, and judges the rest.
    from faeval.study import report

    assert report.main([str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[report] default/BP/seed0: diverged after" in printed
    md = (out / "report.md").read_text()
    diverged = md.split("## Diverged runs", 1)[1].split("\n## ", 1)[0]
    assert "- default/BP/seed0: diverged after" in diverged
    assert "Runs not reported" not in md
    assert json.loads((out / "report.json").read_text())["diverged"]
