"""Runs that survive being killed: atomic checkpoints, exact resume mid-epoch, checked options."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from faeval.callbacks import LastCheckpoint
from faeval.cli import run
from faeval.resume import AtomicCheckpointIO, ResumeConflict, checkpointing, conflicting_options
from faeval.runlog import keep_rows_through, read_rows
from tests.helpers import TINY_RUN, subprocess_env

#: 3 epochs of 4 batches; last.ckpt after every step (the epoch's last step: at its end).
RUN = [*TINY_RUN, "--trainer.max_epochs", "3", "--data.random_targets", "true",
       "--checkpoint_every_n_steps", "1"]  # fmt: skip


def run_dir(root: Path) -> Path:
    return root / "lightning_logs" / "SyntheticLadder" / "DFA" / "seed0"


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> Path:
    """A run killed (SIGKILL) half-way through writing its 8th checkpoint.

    Saves: after steps 1-3, at epoch 1's end, after steps 5-7, at epoch 2's end (the 8th):
    the kill comes after epoch 2's row was written, and the last whole checkpoint is from
    step 7, in the middle of epoch 2. Returns the root folder of the run.
    """
    root = tmp_path_factory.mktemp("killed")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "faeval",
            "fit",
            "--model",
            "DFA",
            *RUN,
            "--trainer.default_root_dir",
            str(root),
            "--trainer.plugins",
            "tests.helpers.KillWhileWriting",
            "--trainer.plugins.save",
            "8",
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -9, done.stderr[-2000:]
    return root


def resume(root: Path, ckpt: Path, *args: str):
    return run(["fit", "--model", "DFA", *RUN, "--trainer.default_root_dir", str(root),
                "--ckpt_path", str(ckpt), *args])  # fmt: skip


def test_a_run_killed_while_writing_resumes_exactly_from_its_last_whole_checkpoint(
    killed, tmp_path
):
    root = tmp_path / "killed"
    shutil.copytree(killed, root)
    folder = run_dir(root)
    torn = list((folder / "checkpoints").glob(".last.ckpt.*.tmp"))
    assert len(torn) == 1  # the torn write, beside the whole last.ckpt
    ckpt = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 7
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 1, "position": 3}
    ]
    assert [r["epoch"] for r in read_rows(folder / "diagnostics.jsonl")] == [0, 1, 2]

    straight = run(["fit", "--model", "DFA", *RUN, "--trainer.default_root_dir",
                    str(tmp_path / "straight")])  # fmt: skip
    resumed = resume(root, folder / "checkpoints" / "last.ckpt")
    assert resumed.trainer.global_step == straight.trainer.global_step == 12
    want, got = straight.model.state_dict(), resumed.model.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    lines = (folder / "diagnostics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line whole
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]  # epoch 2 once: its first row went
    straight_rows = read_rows(run_dir(tmp_path / "straight") / "diagnostics.jsonl")
    assert [r["train/loss"] for r in rows] == [r["train/loss"] for r in straight_rows]
    assert [r["g_norm"] for r in rows] == [r["g_norm"] for r in straight_rows]
    assert not list((folder / "checkpoints").glob(".*.tmp"))  # the torn file is gone


def test_the_control_without_the_batch_position_replays_the_epoch_and_differs(killed, tmp_path):
    root = tmp_path / "killed"
    shutil.copytree(killed, root)
    ckpt_path = run_dir(root) / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=False)
    del ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    torch.save(ckpt, ckpt_path)
    straight = run(["fit", "--model", "DFA", *RUN, "--trainer.default_root_dir",
                    str(tmp_path / "straight")])  # fmt: skip
    replayed = resume(root, ckpt_path)
    want, got = straight.model.state_dict(), replayed.model.state_dict()
    differ = [k for k in want if not torch.equal(want[k], got[k])]
    assert len(differ) > len(want) // 2  # the weights, all but the fixed feedback


def test_resume_refuses_model_options_that_contradict_the_checkpoint(killed, tmp_path):
    ckpt = run_dir(killed) / "checkpoints" / "last.ckpt"
    with pytest.raises(ResumeConflict) as err:
        resume(tmp_path, ckpt, "--model.backbone.d_hidden", "16", "--model.penalty", "0.5")
    message = str(err.value)
    assert "--model.backbone.d_hidden 16 (checkpoint: 8)" in message
    assert "--model.penalty 0.5 (checkpoint: 0.0)" in message
    with pytest.raises(ResumeConflict, match=r"--model FA \(checkpoint: DFA\)"):
        run(["fit", "--model", "FA", *RUN, "--trainer.default_root_dir", str(tmp_path),
             "--ckpt_path", str(ckpt)])  # fmt: skip


def test_conflicting_options_compares_only_what_was_given():
    saved = {"_class_path": "faeval.methods.DFA", "_instantiator": "x", "penalty": 0.0,
             "backbone": {"class_path": "faeval.backbones.ResMLP",
                          "init_args": {"d_hidden": 8, "num_blocks": 2}},
             "optimizer": {"class_path": "torch.optim.Adam",
                           "init_args": {"betas": [0.9, 0.999]}}}  # fmt: skip
    given = {"class_path": "faeval.methods.DFA",
             "init_args": {"backbone": {"init_args": {"num_blocks": 2}},
                           "optimizer": {"init_args": {"betas": (0.9, 0.999)}}}}  # fmt: skip
    assert conflicting_options(given, saved) == []
    given["init_args"]["backbone"]["init_args"]["num_blocks"] = 3
    assert conflicting_options(given, saved) == ["--model.backbone.num_blocks 3 (checkpoint: 2)"]


def test_atomic_writes_leave_the_previous_checkpoint_whole_when_interrupted(tmp_path):
    class Interrupted(AtomicCheckpointIO):
        def _write(self, checkpoint, fh):
            fh.write(b"half a checkpoint")
            raise KeyboardInterrupt

    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    with pytest.raises(KeyboardInterrupt):
        Interrupted().save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    assert torch.equal(torch.load(path)["state_dict"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_runs_keep_one_last_checkpoint_written_atomically_unless_configured_otherwise():
    extras = checkpointing({})
    assert [type(c) for c in extras["callbacks"]] == [LastCheckpoint]
    assert [type(p) for p in extras["plugins"]] == [AtomicCheckpointIO]
    assert checkpointing({"enable_checkpointing": False})["callbacks"] == []
    assert checkpointing({}, 5)["callbacks"][0].every_n_steps == 5


def test_a_torn_last_row_is_never_read_and_goes_on_resume(tmp_path):
    path = tmp_path / "diagnostics.jsonl"
    path.write_text('{"epoch": 0}\n{"epoch": 1}\n{"epoch": 2}\n{"epo')
    assert [r["epoch"] for r in read_rows(path)] == [0, 1, 2]
    assert keep_rows_through(path, 1) == 2  # epoch 2's row and the torn line
    assert path.read_text() == '{"epoch": 0}\n{"epoch": 1}\n'
    assert keep_rows_through(path, 1) == 0
