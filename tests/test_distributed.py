"""DDP on two CPU processes (gloo) against one process with the doubled batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from faeval.cli import run
from faeval.diagnostics.layers import measure_layers
from faeval.runlog import read_rows
from tests.helpers import subprocess_env
from tests.protocol.cli_args import protocol_args

B = 16  # per rank; the single process takes 2·B
#: 128 training samples: 4 global batches of 32; 100 test samples: ranks get 50 each.
DATA = ["--data", "SyntheticLadder", "--data.input_dim", "8", "--data.num_classes", "3",
        "--data.n_train", "128", "--data.n_test", "100", "--data.probe_size", "64",
        "--data.eval_batch_size", "32", "--data.random_targets", "true",
        "--model.backbone.d_hidden", "8", "--model.backbone.num_blocks", "2",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.accelerator", "cpu", "--trainer.log_every_n_steps", "1"]  # fmt: skip


def fit(root: Path, model: str, *args: str, devices: int = 1, epochs: int = 1):
    batch = B if devices > 1 else 2 * B
    strategy = ["--trainer.strategy", "ddp_fork", "--trainer.devices", str(devices)]
    return run(
        [
            "fit",
            "--model",
            model,
            *DATA,
            "--data.batch_size",
            str(batch),
            "--trainer.max_epochs",
            str(epochs),
            "--trainer.default_root_dir",
            str(root),
            *(strategy if devices > 1 else []),
            *args,
        ]
    )


def rows(root: Path, model: str) -> list[dict]:
    path = root / "lightning_logs" / "SyntheticLadder" / model / "seed0" / "diagnostics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("model", ["BP", "FA", "DFA"])
def test_two_ranks_with_batch_b_equal_one_process_with_batch_2b(tmp_path, capfd, model):
    single = fit(tmp_path / "single", model)
    capfd.readouterr()
    (tmp_path / "ranks").mkdir()
    ddp = fit(tmp_path / "ddp", model, "--trainer.callbacks+=tests.helpers.RankStates",
              "--trainer.callbacks.folder", str(tmp_path / "ranks"), devices=2)  # fmt: skip
    out = capfd.readouterr().out
    assert out.count("[faeval] epoch 1 ") == 1 and out.count("[faeval] epoch 0 (init)") == 1

    ranks = [torch.load(tmp_path / "ranks" / f"rank{r}.pt") for r in (0, 1)]
    want = single.model.state_dict()
    worst = 0.0
    for key, value in want.items():
        for state in ranks:
            scale = value.abs().max().clamp_min(1e-12)
            rel = ((state[key] - value).abs().max() / scale).item()
            worst = max(worst, rel)
            assert rel <= 1e-5, key
        if key.startswith("feedback."):  # drawn from the run seed: the same on every rank
            assert torch.equal(ranks[0][key], value) and torch.equal(ranks[1][key], value)
    print(f"{model}: largest relative difference {worst:.2e}")

    got, ref = rows(tmp_path / "ddp", model), rows(tmp_path / "single", model)
    assert [r["epoch"] for r in got] == [0, 1]  # one row per epoch, written once
    assert got[1]["train/loss"] == pytest.approx(ref[1]["train/loss"], rel=1e-5)
    # The row is what one process measures on the DDP run's weights, on the same probe.
    model_ = ddp.model.cpu()
    model_.load_state_dict(ranks[0])
    fig = measure_layers(model_, *ddp.datamodule.probe())
    assert got[1]["h_norm"] == fig.h_norm and got[1]["g_norm"] == fig.g_norm
    # Test accuracy over the whole test set (both ranks' halves), not rank 0's half.
    x, y = ddp.datamodule.splits["test"]
    with torch.no_grad():
        acc = (model_(ddp.datamodule.normalize(x)).argmax(1) == y).float().mean().item()
    assert got[1]["test/acc"] == pytest.approx(acc, abs=1e-6)


@pytest.mark.slow
def test_a_ddp_run_started_as_the_command_line_does_resumes_exactly(tmp_path):
    """``--trainer.strategy ddp`` (Lightning starts rank 1 as a new process) used to hang;
    the Protocol callback's heavier pieces run on rank 0 and are written once too."""
    protocol = protocol_args(every=1)
    straight = fit(tmp_path / "straight", "DFA", *protocol, devices=2, epochs=2)
    fit(tmp_path / "half", "DFA", *protocol, devices=2, epochs=1)
    folder = tmp_path / "half" / "lightning_logs" / "SyntheticLadder" / "DFA" / "seed0"
    resume = ["--data.batch_size", str(B), "--trainer.max_epochs", "2",
              "--trainer.default_root_dir", str(tmp_path / "half"),
              "--trainer.strategy", "ddp", "--trainer.devices", "2",
              "--ckpt_path", str(folder / "checkpoints" / "last.ckpt")]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "faeval", "fit", "--model", "DFA", *DATA, *protocol, *resume],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("[faeval] epoch 2 ") == 1  # printed by rank 0 alone
    assert [r["epoch"] for r in rows(tmp_path / "half", "DFA")] == [0, 1, 2]
    assert [r["epoch"] for r in read_rows(folder / "protocol.jsonl")] == [1, 2]
    resumed = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["global_step"] == 8
    want = straight.model.state_dict()
    for key, value in want.items():
        assert torch.equal(resumed["state_dict"][key], value), key
