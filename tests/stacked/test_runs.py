"""Each seed of a stack read as an ordinary run: audit, test, protocol rows and TensorBoard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import faeval.methods
from faeval.cli import known_names, run
from faeval.runlog import RunLog
from faeval.stacked import NotStackable
from tests.helpers import TINY_RUN
from tests.protocol.cli_args import AUDIT, protocol_args
from tests.stacked.fits import ALIGNED, checkpoint, fit, seed_dir


def without_seconds(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("seconds", "epoch_seconds")}


@pytest.fixture(scope="module")
def with_protocol(tmp_path_factory) -> Path:
    """Seeds 0, 1 stacked and seed 1 alone, with the protocol's pieces every epoch."""
    root = tmp_path_factory.mktemp("protocol")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every test runs (conftest)
    try:
        fit(root / "stack", "--seeds", "0,1", *protocol_args(), data=ALIGNED)
        fit(root / "alone", "--seed_everything", "1", *protocol_args(), data=ALIGNED)
    finally:
        torch.set_num_threads(threads)
    return root


def test_protocol_rows_are_the_lone_runs(with_protocol):
    stacked = RunLog(seed_dir(with_protocol / "stack", 1)).protocol_rows()
    alone = RunLog(seed_dir(with_protocol / "alone", 1)).protocol_rows()
    assert [r["epoch"] for r in stacked] == [1, 2]
    for got, want in zip(stacked, alone, strict=True):
        got.pop("seconds"), want.pop("seconds")
        assert without_seconds(got) == without_seconds(want)


def test_a_seeds_checkpoint_audits_to_the_figures_of_its_lone_run(with_protocol):
    records = {}
    for name in ("stack", "alone"):
        run_dir = seed_dir(with_protocol / name, 1)
        run(["audit", str(run_dir), *AUDIT])
        records[name] = json.loads(next((run_dir / "checkpoints").glob("*.audit.json")).read_text())
    got, want = records["stack"], records["alone"]
    assert without_seconds(got["diagnostics"]) == without_seconds(want["diagnostics"])
    for piece in ("null", "rho", "stability"):
        assert got["protocol"][piece] == want["protocol"][piece], piece
    assert got["verdict"] == {**want["verdict"]}
    logged = RunLog(seed_dir(with_protocol / "stack", 1)).rows()[-1]
    assert got["diagnostics"]["h_norm"] == logged["h_norm"]  # and what the stack logged


@pytest.mark.parametrize("model", ["FF", "ForwardGradient"])  # credits from per-step draws
def test_a_seeds_checkpoint_of_a_method_that_draws_every_step_audits_as_its_lone_run(
    tmp_path, model
):
    """The audit's credits take the draw of the step after the checkpoint's count, from the
    seed's own draw seed: a stacked seed's checkpoint must hold its lone run's draw state."""
    records = {}
    for name, seeds in (("stack", ["--seeds", "0,1"]), ("alone", ["--seed_everything", "1"])):
        fit(tmp_path / name, *seeds, *protocol_args(), model=model, data=ALIGNED)
        run_dir = seed_dir(tmp_path / name, 1, model)
        run(["audit", str(run_dir), *AUDIT])
        records[name] = json.loads(next((run_dir / "checkpoints").glob("*.audit.json")).read_text())
    got, want = records["stack"], records["alone"]
    assert without_seconds(got["diagnostics"]) == without_seconds(want["diagnostics"])
    assert got["verdict"] == want["verdict"]


# `faeval test` runs with checkpointing off, so Lightning notes that the checkpoint was written
# with a ModelCheckpoint: the same for a lone run's checkpoint.
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_faeval_test_reads_a_seeds_run_folder(with_protocol):
    run_dir = seed_dir(with_protocol / "stack", 0)
    run(["test", str(run_dir)])
    (results,) = run_dir.glob("eval/test-*/results.json")
    got = json.loads(results.read_text())["metrics"]["test/acc"]
    assert got == RunLog(run_dir).rows()[-1]["test/acc"]


def test_each_seeds_tensorboard_run_is_its_lone_runs(with_protocol):
    def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
        events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        events.Reload()
        return {
            tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]
        }

    got = scalars(seed_dir(with_protocol / "stack", 1))
    want = scalars(seed_dir(with_protocol / "alone", 1))
    assert got.keys() == want.keys()
    for tag in ("diag/h_L", "diag/g_L", "diag/cos/l1", "train/loss", "test/acc", "protocol/rho/l1"):
        assert got[tag] == want[tag], tag
    assert checkpoint(seed_dir(with_protocol / "stack", 1))["epoch"] == 1


@pytest.mark.parametrize("model", known_names()["model"])
def test_every_method_the_cli_knows_stacks_or_is_refused(tmp_path, model):
    args = ["--seeds", "0,1", "--trainer.enable_checkpointing", "false"]
    reason = getattr(faeval.methods, model).stack_refusal  # what the class declares
    if reason is not None:
        with pytest.raises(
            NotStackable, match=re.escape(f"{model} cannot be stacked over seeds: {reason}")
        ):
            fit(tmp_path, *args, model=model, epochs=1, data=TINY_RUN)
        return
    fit(tmp_path, *args, model=model, epochs=1, data=TINY_RUN)
    for seed in (0, 1):
        rows = RunLog(seed_dir(tmp_path, seed, model)).rows()
        assert [r["epoch"] for r in rows] == [0, 1] and rows[-1]["seed"] == seed
        assert rows[-1]["method"] == model and rows[-1]["test/acc"] is not None
