"""``faeval fit --seeds``: each seed of a stack against the same seed trained alone.

Bit for bit: with every parameter's size a multiple of 16 floats, the stack and the lone run
agree to the bit in weights, optimizer state and every diagnostics figure. With other sizes
(the default tiny run: 3 classes, width 8), fused Adam's CPU kernel updates the tail of a
parameter that is not a whole number of vectors with scalar code that rounds otherwise than
its vector body, so a seed's small tensors (a 3-class head's bias) drift in the last bits:
there the weights agree within 1e-6 relative and the rows within 1e-5.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from faeval.cli import main, run
from faeval.cli.stacked import STACK_FILE, format_seeds, parse_seeds
from faeval.methods.base import UNDECLARED_STACKING
from faeval.runlog import RunLog
from faeval.stacked import NotStackable
from faeval.study import layout, sweep
from tests.helpers import TINY_RUN
from tests.stacked.fits import (
    ALIGNED,
    assert_close_rows,
    assert_same,
    checkpoint,
    fit,
    rows,
    seed_dir,
    tensors,
)


def test_each_seed_is_bit_for_bit_the_run_it_would_be_alone(aligned):
    for seed in (1, 2):
        stacked, alone = seed_dir(aligned / "stack", seed), seed_dir(aligned / "alone", seed)
        assert rows(stacked) == rows(alone)
        got, want = tensors(checkpoint(stacked)), tensors(checkpoint(alone))
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), "weights or optimizer state"
        assert [r["seed"] for r in rows(stacked)] == [seed] * 3


def test_a_stack_of_one_seed_is_its_lone_run(aligned, tmp_path):
    fit(tmp_path, "--seeds", "1", data=ALIGNED)
    stacked, alone = seed_dir(tmp_path, 1), seed_dir(aligned / "alone", 1)
    assert rows(stacked) == rows(alone)
    got, want = tensors(checkpoint(stacked)), tensors(checkpoint(alone))
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_each_seed_has_an_ordinary_run_folder(aligned):
    stack = aligned / "stack" / "lightning_logs" / "SyntheticLadder" / "DFA" / "stack-0-2"
    record = json.loads((stack / STACK_FILE).read_text())
    assert record["seeds"] == [0, 1, 2]
    for seed, run_dir in zip(record["seeds"], record["run_dirs"], strict=True):
        assert not Path(run_dir).is_absolute()  # relative: the folders move together
        run_dir = (stack / run_dir).resolve()
        assert run_dir == seed_dir(aligned / "stack", seed).resolve()
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["seed_everything"] == seed and config["seeds"] is None
        assert list(run_dir.glob("events.out.tfevents.*")) and (run_dir / "hparams.yaml").is_file()
        ckpt = checkpoint(run_dir)
        alone = checkpoint(seed_dir(aligned / "alone", 1))
        assert ckpt.keys() == alone.keys() and ckpt["callbacks"].keys() == alone["callbacks"].keys()
        assert ckpt["hyper_parameters"] == alone["hyper_parameters"]
    stack_config = yaml.safe_load((stack / "config.yaml").read_text())
    assert stack_config["seeds"] == "0-2"
    assert [p.name for p in (stack / "checkpoints").glob("*.ckpt")] == ["last.ckpt"]


# Resuming continues in the run's own folder, so ModelCheckpoint finds it non-empty, and this
# one is a copy, so the folder recorded in its checkpoint has moved: both intended.
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
@pytest.mark.filterwarnings("ignore:The dirpath has changed from")
def test_a_seed_resumed_alone_from_its_stacked_checkpoint_goes_on_as_if_never_stacked(
    aligned, tmp_path
):
    seed = 2
    run_dir = tmp_path / "seed2"  # a copy: the fixture's folder stays as the stack left it
    shutil.copytree(seed_dir(aligned / "stack", seed), run_dir)
    ckpt = next((run_dir / "checkpoints").glob("*.ckpt"))
    fit(tmp_path / "three", "--seed_everything", str(seed), data=ALIGNED, epochs=3)
    run(
        [
            "fit",
            "--config",
            str(run_dir / "config.yaml"),
            "--ckpt_path",
            str(ckpt),
            "--trainer.max_epochs",
            "3",
        ]
    )
    assert rows(run_dir) == rows(seed_dir(tmp_path / "three", seed))
    want = tensors(checkpoint(seed_dir(tmp_path / "three", seed)))
    got = tensors(checkpoint(run_dir))
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_with_other_sizes_each_seed_matches_its_lone_run_within_float_rounding(tmp_path):
    fit(tmp_path / "stack", "--seeds", "0,1")
    fit(tmp_path / "alone", "--seed_everything", "1")
    stacked, alone = seed_dir(tmp_path / "stack", 1), seed_dir(tmp_path / "alone", 1)
    got, want = tensors(checkpoint(stacked)), tensors(checkpoint(alone))
    for key, value in want.items():
        assert torch.allclose(got[key], value, rtol=1e-6, atol=1e-12), key
    assert_close_rows(rows(stacked), rows(alone), rel=1e-5)


def test_no_coupling_another_seed_leaves_every_other_seeds_run_bit_identical(aligned, tmp_path):
    fit(tmp_path, "--seeds", "0,7,2", data=ALIGNED)
    for seed in (0, 2):
        assert rows(seed_dir(tmp_path, seed)) == rows(seed_dir(aligned / "stack", seed))
        got = tensors(checkpoint(seed_dir(tmp_path, seed)))
        want = tensors(checkpoint(seed_dir(aligned / "stack", seed)))
        assert all(torch.equal(got[k], want[k]) for k in want)


# Resuming continues in the run's own folder, so ModelCheckpoint finds it non-empty: intended.
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
@pytest.mark.parametrize("model", ["StateBridge", "BRSF", "FF"])  # BRSF, FF: draw state, per seed
def test_a_stack_resumes_exactly_two_plus_two_epochs_is_four(tmp_path, model):
    seeds = ["--seeds", "3,4", "--data.random_targets", "true"]
    fit(tmp_path / "four", *seeds, model=model, epochs=4)
    fit(tmp_path / "two", *seeds, model=model, epochs=2)
    stack = tmp_path / "two" / "lightning_logs" / "SyntheticLadder" / model / "stack-3-4"
    ckpt = next((stack / "checkpoints").glob("*.ckpt"))
    run(
        [
            "fit",
            "--config",
            str(stack / "config.yaml"),
            "--ckpt_path",
            str(ckpt),
            "--trainer.max_epochs",
            "4",
        ]
    )
    assert (stack / "config.resumed.yaml").is_file()
    for seed in (3, 4):
        resumed = seed_dir(tmp_path / "two", seed, model)
        straight = seed_dir(tmp_path / "four", seed, model)
        assert [r["epoch"] for r in rows(resumed)] == [0, 1, 2, 3, 4]
        assert rows(resumed) == rows(straight)
        assert_same(tensors(checkpoint(resumed)), tensors(checkpoint(straight)))
        assert (resumed / "config.resumed.yaml").is_file()


def test_the_floor_stop_ends_one_seed_and_the_others_go_on(tmp_path):
    fit(tmp_path / "free", "--seeds", "0-2", epochs=2)
    g_l = {s: RunLog(seed_dir(tmp_path / "free", s)).rows()[1]["g_L"] for s in range(3)}
    low, high = min(g_l, key=g_l.get), max(g_l, key=g_l.get)
    floor = math.sqrt(g_l[low] * sorted(g_l.values())[1])  # between the lowest and the next
    fit(
        tmp_path / "floor",
        "--seeds",
        "0-2",
        "--floor_stop",
        "true",
        "--diagnostics.grad_floor",
        str(floor),
        epochs=2,
    )
    epochs = {s: [r["epoch"] for r in RunLog(seed_dir(tmp_path / "floor", s)).rows()] for s in g_l}
    assert epochs[low] == [0, 1] and epochs[high] == [0, 1, 2]
    for s in g_l:  # what ran is the same run as without the stop (the floor aside)
        n = len(epochs[s])
        got, want = rows(seed_dir(tmp_path / "floor", s)), rows(seed_dir(tmp_path / "free", s))
        keys = ("h_norm", "g_norm", "train/loss", "test/acc", "step")
        assert [[r[k] for k in keys] for r in got] == [[r[k] for k in keys] for r in want[:n]]


def test_settings_a_stack_cannot_honour_are_refused(tmp_path):
    with pytest.raises(NotStackable, match=r"drop --trainer\.logger"):
        fit(tmp_path, "--seeds", "0-1", "--trainer.logger", "CSVLogger",
            "--trainer.logger.save_dir", str(tmp_path), epochs=1)  # fmt: skip
    with pytest.raises(NotStackable, match="one device"):
        fit(tmp_path, "--seeds", "0-1", "--trainer.devices", "2", epochs=1)
    with pytest.raises(ValueError, match="one seed twice"):
        fit(tmp_path, "--seeds", "1,1", epochs=1)
    with pytest.raises(ValueError, match=r"--stack\.compile applies to stacked runs; add --seeds"):
        fit(tmp_path, "--stack.compile", "true", epochs=1)
    with pytest.raises(ValueError, match="faeval test reads one run: point it at a seed's own"):
        run(["test", "--model", "DFA", *TINY_RUN, "--seeds", "0-1"])


def test_seed_lists():
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7] and parse_seeds(5) == [5]
    assert format_seeds([0, 1, 2, 3, 7, 9, 10]) == "0-3,7,9-10"
    with pytest.raises(ValueError, match=r"e\.g\. 0-9"):
        parse_seeds("a-b")
    with pytest.raises(ValueError, match="5-3 names no seed; write 3-5"):
        parse_seeds("5-3,1")  # once trained seed 1 only


#: A researcher's own methods: DFA's step under other names, declared stackable, declared not
#: (with a reason) and undeclared.
USER_METHODS = """
from typing import ClassVar

from faeval.methods import DFA


class Mine(DFA):
    \"\"\"DFA's step: its rows are kept apart per seed as DFA's are.\"\"\"

    stack_refusal: ClassVar[str | None] = None


class Coupled(DFA):
    \"\"\"Says why it does not stack.\"\"\"

    stack_refusal: ClassVar[str | None] = "its credits mix the samples of a batch"


class Unsaid(DFA):
    \"\"\"Says nothing: inherits DFA's step, not its declaration.\"\"\"
"""


@pytest.fixture(scope="module")
def user_package(tmp_path_factory):
    """``stackpkg.methods`` in a temporary folder, importable here and, through
    ``PYTHONPATH``, in the processes a sweep starts."""
    root = tmp_path_factory.mktemp("project")
    (root / "stackpkg").mkdir()
    (root / "stackpkg" / "__init__.py").write_text("")
    (root / "stackpkg" / "methods.py").write_text(USER_METHODS)
    # It stays on sys.path for the session: once imported, its classes are CreditMethod
    # subclasses that jsonargparse lists in every later parser, which must import them.
    sys.path.insert(0, str(root))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
        yield root


def assert_stacked_seed_is_its_lone_run(root: Path, model: str) -> None:
    """Seeds 0, 1 stacked and seed 1 alone: seed 1's rows, weights and optimizer state agree
    bit for bit."""
    fit(root / "stack", "--seeds", "0,1", data=ALIGNED, model=model)
    fit(root / "alone", "--seed_everything", "1", data=ALIGNED, model=model)
    name = model.rpartition(".")[2]
    stacked, alone = seed_dir(root / "stack", 1, name), seed_dir(root / "alone", 1, name)
    assert rows(stacked) == rows(alone) and [r["method"] for r in rows(stacked)] == [name] * 3
    assert_same(tensors(checkpoint(stacked)), tensors(checkpoint(alone)))


@pytest.mark.parametrize(
    "model",
    [
        *("DRTP", "PC", "LayerFA", "USF", "FRSF", "KP", "BRSF"),
        *("TP", "DTP", "DRL", "LDRL", "ForwardGradient", "PEPITA", "FF"),
    ],
)
def test_a_newly_stacked_method_trains_each_seed_as_its_lone_run(tmp_path, model):
    assert_stacked_seed_is_its_lone_run(tmp_path, model)


def test_a_method_of_your_own_declared_stackable_stacks_each_seed_its_lone_run(
    user_package, tmp_path
):
    mine = "stackpkg.methods.Mine"
    assert_stacked_seed_is_its_lone_run(tmp_path, mine)
    assert layout.stackable(mine) and layout.stackable("DFA")  # a sweep stacks it too


@pytest.mark.parametrize(
    ("name", "reason"),
    [("Coupled", "its credits mix the samples of a batch"), ("Unsaid", UNDECLARED_STACKING)],
)
def test_a_method_of_your_own_that_does_not_declare_it_is_refused_in_one_line(
    user_package, tmp_path, capsys, name, reason
):
    method = f"stackpkg.methods.{name}"
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--model", method, *ALIGNED, "--trainer.max_epochs", "1",
              "--trainer.default_root_dir", str(tmp_path), "--seeds", "0,1"])  # fmt: skip
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"faeval: error: {name} cannot be stacked over seeds: {reason}; "
                                "train these seeds one process each (leave out --seeds, or "
                                "faeval sweep --stack 1)"]  # fmt: skip
    assert not layout.stackable(method)  # a sweep runs its seeds one process each


@pytest.mark.slow
def test_a_sweep_stacks_a_method_of_your_own_that_declares_it_and_runs_the_others_alone(
    user_package, tmp_path
):
    spec = tmp_path / "spec.yaml"
    methods = ["stackpkg.methods.Mine", "stackpkg.methods.Unsaid"]
    spec.write_text(json.dumps({"seeds": [0, 1], "methods": methods,
                                "args": [*TINY_RUN, "--trainer.max_epochs", "1"]}))  # fmt: skip
    out = tmp_path / "out"
    assert sweep.main([str(spec), "--out", str(out), "--jobs", "2", "--cores", "2"]) == 0
    stacks = out / "stacks" / "default"
    assert [p.name for p in (stacks / methods[0]).iterdir()] == ["seeds0-1"]  # one process
    assert not (stacks / methods[1]).exists()  # one process per seed
    with (out / "results.csv").open() as fh:
        rows = {(r["method"], r["seed"]): r["status"] for r in csv.DictReader(fh)}
    assert len(rows) == 6 and set(rows.values()) == {"ok"}  # FrozenBlocks joins
