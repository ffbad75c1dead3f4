"""The stack's module: the compiled step and its shapes, validation per seed."""

from __future__ import annotations

import functools

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from faeval.runlog import RunLog
from tests.helpers import TINY_RUN
from tests.stacked.fits import fit, seed_dir

#: 120 samples in batches of 32: three full batches and a last one of 24.
PARTIAL = [*TINY_RUN, "--data.n_train", "120"]


@pytest.mark.parametrize("model", ["DFA", "BP"])
def test_the_compiled_step_compiles_two_shapes_once_and_changes_nothing(
    tmp_path, monkeypatch, model
):
    # The eager backend runs Dynamo's capture (graphs, guards, recompilation) without code
    # generation: the figures must stay bit for bit those of the uncompiled step.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    counters.clear()
    fit(tmp_path / "compiled", "--seeds", "0,1", "--stack.compile", "true", model=model,
        data=PARTIAL, epochs=3)  # fmt: skip
    assert counters["stats"]["unique_graphs"] == 2  # full batches and the last, smaller one
    assert not counters["recompiles"] and not counters["graph_break"]
    fit(tmp_path / "eager", "--seeds", "0,1", model=model, data=PARTIAL, epochs=3)
    for seed in (0, 1):
        got = RunLog(seed_dir(tmp_path / "compiled", seed, model)).rows()
        want = RunLog(seed_dir(tmp_path / "eager", seed, model)).rows()
        drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
        assert drop(got) == drop(want)
    torch._dynamo.reset()


def test_bf16_training_keeps_the_diagnostics_in_float32(tmp_path):
    fit(tmp_path, "--seeds", "0,1", "--trainer.precision", "bf16-mixed", epochs=1)
    fit(tmp_path / "fp32", "--seeds", "0,1", epochs=1)
    for seed in (0, 1):
        bf16 = RunLog(seed_dir(tmp_path, seed)).rows()
        fp32 = RunLog(seed_dir(tmp_path / "fp32", seed)).rows()
        assert bf16[0]["g_norm"] == fp32[0]["g_norm"]  # the same initialisation, measured in fp32
        assert bf16[-1]["g_norm"] != fp32[-1]["g_norm"]  # trained in bf16
        assert bf16[-1]["g_norm"] == pytest.approx(fp32[-1]["g_norm"], rel=0.05)
