"""A stack that survives being killed: last.ckpt per stack and per seed, exact mid-epoch resume.

A stack keeps ``checkpoints/last.ckpt`` as a lone run does (every epoch and every N steps,
written atomically through the trainer's checkpoint IO), and each seed's folder gets its own
last.ckpt beside it, its lone run's: the batch position and that seed's running epoch sums
included. So a killed stack continues from its own checkpoint, and a seed from its own, alone,
each to the bit of the run that was never killed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from faeval.cli import run
from faeval.resume import ResumeConflict
from faeval.runlog import read_rows
from tests.helpers import subprocess_env
from tests.stacked.fits import ALIGNED, rows, seed_dir, tensors

#: 3 epochs of 4 batches (48, 48, 48, 16), last.ckpt after every step, random targets.
RUN = [*ALIGNED, "--trainer.max_epochs", "3", "--data.random_targets", "true",
       "--checkpoint_every_n_steps", "1"]  # fmt: skip
SEEDS = ["--seeds", "1,2"]


def stack_dir(root: Path) -> Path:
    return root / "lightning_logs" / "SyntheticLadder" / "DFA" / "stack-1-2"


def last(folder: Path) -> dict:
    return torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)


def fit(root: Path, *args: str):
    return run(["fit", "--model", "DFA", *RUN, "--trainer.default_root_dir", str(root), *args])


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> Path:
    """Seeds 1 and 2 stacked, killed (SIGKILL) half-way through writing the 7th checkpoint.

    Each save writes seed 1's last.ckpt, seed 2's, then the stack's (3 writes); saves come
    after steps 1-3, at epoch 1's end (4), after steps 5, 6, 7: the 21st write is the stack's
    own checkpoint of step 7. So the seeds' last.ckpt are of step 7 and the stack's of step 6,
    both in the middle of epoch 2.
    """
    root = tmp_path_factory.mktemp("killed_stack")
    done = subprocess.run(
        [sys.executable, "-m", "faeval", "fit", "--model", "DFA", *RUN, *SEEDS,
         "--trainer.default_root_dir", str(root),
         "--trainer.plugins", "tests.helpers.KillWhileWriting", "--trainer.plugins.save", "21"],
        env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == -9, done.stderr[-2000:]
    return root


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The same stack and seed 1 alone, never killed."""
    root = tmp_path_factory.mktemp("straight_stack")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed subprocess (OMP_NUM_THREADS=1)
    try:
        fit(root / "stack", *SEEDS)
        fit(root / "alone", "--seed_everything", "1")
    finally:
        torch.set_num_threads(threads)
    return root


def test_a_killed_stack_left_whole_checkpoints_in_the_middle_of_an_epoch(killed):
    stack = stack_dir(killed)
    assert len(list((stack / "checkpoints").glob(".last.ckpt.*.tmp"))) == 1  # the torn write
    ckpt = last(stack)
    assert ckpt["global_step"] == 6
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 1, "position": 2}
    ]
    for seed in (1, 2):
        seed_ckpt = last(seed_dir(killed, seed))
        assert seed_ckpt["global_step"] == 7
        assert seed_ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
            {"epoch": 1, "position": 3}
        ]
        loss_sum, count = seed_ckpt["faeval_epoch_sums"]["train/loss"]
        assert loss_sum.shape == (1,) and count == 3  # its own running sum, as alone
        assert [r["epoch"] for r in read_rows(seed_dir(killed, seed) / "diagnostics.jsonl")] == [
            0,
            1,
        ]


# The resumed stack continues in its own folder, so ModelCheckpoint finds it non-empty.
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_a_killed_stack_resumes_exactly_from_its_last_whole_checkpoint(killed, straight, tmp_path):
    root = tmp_path / "killed"
    shutil.copytree(killed, root)  # the whole root: stack.json's folders are relative
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(ResumeConflict, match=r"--model.penalty 0.5 \(checkpoint: 0.0\)"):
            fit(root, *SEEDS, "--ckpt_path", str(stack_dir(root) / "checkpoints" / "last.ckpt"),
                "--model.penalty", "0.5")  # fmt: skip
        fit(root, *SEEDS, "--ckpt_path", str(stack_dir(root) / "checkpoints" / "last.ckpt"))
    finally:
        torch.set_num_threads(threads)
    assert not list((stack_dir(root) / "checkpoints").glob(".*.tmp"))  # the torn file is gone
    for seed in (1, 2):
        resumed, want = seed_dir(root, seed), seed_dir(straight / "stack", seed)
        lines = (resumed / "diagnostics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2, 3]
        assert rows(resumed) == rows(want)
        got, expected = tensors(last(resumed)), tensors(last(want))
        assert all(torch.equal(got[k], expected[k]) for k in expected), seed
    # And each seed of the straight stack is its lone run, to the bit (aligned sizes).
    assert rows(seed_dir(straight / "stack", 1)) == rows(seed_dir(straight / "alone", 1))


# Resuming continues in the run's own folder (non-empty), copied (its recorded folder moved).
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_a_seed_resumes_alone_mid_epoch_from_its_own_checkpoint(killed, straight, tmp_path):
    run_dir = tmp_path / "seed1"
    shutil.copytree(seed_dir(killed, 1), run_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(
            tmp_path,
            "--seed_everything",
            "1",
            "--ckpt_path",
            str(run_dir / "checkpoints" / "last.ckpt"),
        )
    finally:
        torch.set_num_threads(threads)
    want = seed_dir(straight / "alone", 1)
    assert rows(run_dir) == rows(want)
    got, expected = tensors(last(run_dir)), tensors(last(want))
    assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_the_control_without_the_batch_position_replays_the_epoch_and_differs(
    killed, straight, tmp_path
):
    root = tmp_path / "killed"
    shutil.copytree(killed, root)
    ckpt_path = stack_dir(root) / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    del ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    torch.save(ckpt, ckpt_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(root, *SEEDS, "--ckpt_path", str(ckpt_path))
    finally:
        torch.set_num_threads(threads)
    got, want = tensors(last(seed_dir(root, 1))), tensors(last(seed_dir(straight / "stack", 1)))
    differ = [k for k in want if not torch.equal(got[k], want[k])]
    assert len(differ) > len(want) // 2  # weights and optimizer state, all but fixed feedback
