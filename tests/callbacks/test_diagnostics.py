"""The diagnostics callback's outputs (rows and curves at x = epoch, unmeasurable cosines)
and its probe on any Trainer: anyone's data module, bare loaders, a probe passed in."""

import json
import math
from functools import partial
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from faeval.backbones import ResMLP
from faeval.callbacks import Diagnostics, Protocol
from faeval.cli import run
from faeval.data.contract import probe_batch
from faeval.diagnostics import measure_layers
from faeval.methods import DFA
from faeval.runlog import RunLog
from tests.helpers import TINY_RUN, Blobs


def _fit(tmp_path: Path, *args: str):
    cli = run(["fit", "--model", "DFA", *TINY_RUN, "--trainer.max_epochs", "2",
               "--trainer.default_root_dir", str(tmp_path), *args])  # fmt: skip
    run_dir = Path(cli.trainer.log_dir)
    rows = [json.loads(line) for line in (run_dir / "diagnostics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    return rows, events


def test_every_layer_is_logged_at_x_equal_epoch(tmp_path):
    rows, events = _fit(tmp_path)
    scalars = set(events.Tags()["scalars"])
    for family in ("h_norm", "g_norm", "cos"):
        assert {f"diag/{family}/l{l}" for l in range(3)} <= scalars
    assert {"diag/h_ratio/l1", "diag/h_ratio/l2", "diag/h_L", "diag/g_L", "test/acc"} <= scalars
    g_L = events.Scalars("diag/g_L")
    assert [e.step for e in g_L] == [r["epoch"] for r in rows] == [0, 1, 2]  # init + 2 epochs
    assert all(
        math.isclose(e.value, r["g_L"], rel_tol=1e-6) for e, r in zip(g_L, rows, strict=True)
    )
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]


def test_cosines_under_the_floor_are_nan_in_tensorboard_and_null_in_rows(tmp_path):
    rows, events = _fit(tmp_path, "--diagnostics.grad_floor", "1.0")
    assert all(r["floor_hit"] and r["cos"] == [None, None, None] for r in rows)
    assert all(math.isnan(e.value) for e in events.Scalars("diag/cos/l1"))
    assert all(e.value == 1.0 for e in events.Scalars("diag/floor"))


def _method():
    return DFA((6,), 3, backbone=partial(ResMLP, d_hidden=8, num_blocks=2))


def test_on_a_plain_trainer_with_anyones_data_module_the_probe_is_its_validation_data(
    quiet_trainer, tmp_path
):
    data = Blobs(scale=2.0)
    method = _method()
    init = measure_layers(method, *probe_batch(data))  # the first 96 validation samples, ×2
    callbacks = [Diagnostics(verbose=False), Protocol(every_n_epochs=1, verbose=False)]
    quiet_trainer(max_epochs=2, callbacks=callbacks).fit(method, datamodule=data)
    log = RunLog(tmp_path)
    rows = log.rows()
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[0]["h_norm"] == pytest.approx(init.h_norm, rel=1e-6)
    assert rows[0]["cos"] == pytest.approx(init.cos, rel=1e-6, abs=1e-9)
    assert [r["epoch"] for r in log.protocol_rows()] == [1, 2]


def test_a_trainer_given_loaders_or_a_probe_needs_no_data_module(quiet_trainer, tmp_path):
    data = Blobs()
    data.setup("fit")
    # Validation loaders only: the probe is their first samples (no transfer hook here).
    method = _method()
    xs, ys = data.val_set.dataset.tensors
    init = measure_layers(method, xs, ys)
    trainer = quiet_trainer(
        max_epochs=1, callbacks=[Diagnostics(verbose=False)], limit_val_batches=None
    )
    trainer.fit(method, data.train_dataloader(), data.val_dataloader())
    assert RunLog(tmp_path).rows()[0]["h_norm"] == pytest.approx(init.h_norm, rel=1e-6)
    # An explicit probe wins over everything.
    method = _method()
    probe = (torch.randn(10, 6), torch.randint(0, 3, (10,)))
    init = measure_layers(method, *probe)
    trainer = quiet_trainer(
        max_epochs=1,
        callbacks=[Diagnostics(verbose=False, probe=probe)],
        default_root_dir=str(tmp_path / "b"),
    )
    trainer.fit(method, data.train_dataloader(), data.val_dataloader())
    assert RunLog(tmp_path / "b").rows()[0]["h_norm"] == pytest.approx(init.h_norm, rel=1e-6)


def test_without_data_module_loaders_or_probe_the_error_says_what_to_pass(quiet_trainer):
    data = Blobs()
    data.setup("fit")
    # Validation off (limit_val_batches=0): the trainer never sets its loaders up.
    trainer = quiet_trainer(max_epochs=1, callbacks=[Diagnostics(verbose=False)])
    with pytest.raises(ValueError, match=r"need a probe batch.*pass probe=\(x, y\)"):
        trainer.fit(_method(), data.train_dataloader(), data.val_dataloader())
