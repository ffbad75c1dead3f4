"""The diagnostics callback's outputs: rows and curves at x = epoch, unmeasurable cosines."""

import json
import math
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from faeval.cli import run
from tests.helpers import TINY_RUN


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
