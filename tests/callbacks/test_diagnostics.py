"""The diagnostics callback's outputs: TensorBoard layout and curves, rows, unmeasurable cosines."""

import json
import math
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from faeval.cli import run
from tests.helpers import TINY_RUN


def _fit(tmp_path: Path, *args: str, model: str = "DFA"):
    cli = run(["fit", "--model", model, *TINY_RUN, "--trainer.max_epochs", "2",
               "--trainer.default_root_dir", str(tmp_path), *args])  # fmt: skip
    run_dir = Path(cli.trainer.log_dir)
    rows = [json.loads(line) for line in (run_dir / "diagnostics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    return rows, events


def test_tensorboard_gets_every_layer_and_one_chart_per_family(tmp_path):
    rows, events = _fit(tmp_path)
    scalars = set(events.Tags()["scalars"])
    for family in ("h_norm", "g_norm", "cos"):
        assert {f"diag/{family}/l{l}" for l in range(3)} <= scalars
    assert {"diag/h_ratio/l1", "diag/h_ratio/l2", "diag/h_L", "diag/g_L", "test/acc"} <= scalars
    g_L = events.Scalars("diag/g_L")
    assert g_L[0].step == 0 and len(g_L) == len(rows) == 3  # init + 2 epochs
    assert all(
        math.isclose(e.value, r["g_L"], rel_tol=1e-6) for e, r in zip(g_L, rows, strict=True)
    )

    (config,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for cat in layout.category
              for chart in cat.chart}  # fmt: skip
    assert charts["‖h_L‖ and ‖g_L‖"] == [r"diag/h_L$", r"diag/g_L$"]
    assert charts["‖h_l‖"] == [r"diag/h_norm/l\d+"]
    assert charts["‖g_l‖"] == [r"diag/g_norm/l\d+"]
    assert charts["cos(a_l, g_l)"] == [r"diag/cos/l\d+"]


def test_cosines_under_the_floor_are_nan_in_tensorboard_and_null_in_rows(tmp_path):
    rows, events = _fit(tmp_path, "--diagnostics.grad_floor", "1.0")
    assert all(r["floor_hit"] and r["cos"] == [None, None, None] for r in rows)
    assert all(math.isnan(e.value) for e in events.Scalars("diag/cos/l1"))
    assert all(e.value == 1.0 for e in events.Scalars("diag/floor"))


def test_feedback_weights_and_the_credits_distance_from_backprop_are_logged(tmp_path):
    rows, events = _fit(tmp_path, model="KP")
    scalars = set(events.Tags()["scalars"])
    layers = ["embed.1", "blocks.0.w1", "blocks.0.w2", "blocks.1.w1", "blocks.1.w2", "head"]
    assert all(r["feedback_layers"] == layers for r in rows)
    for family in ("feedback_angle", "feedback_norm_ratio"):
        assert {f"diag/{family}/{name}" for name in layers} <= scalars
    assert {f"diag/credit_error/l{l}" for l in range(3)} <= scalars
    angles = [r["feedback_angle"] for r in rows]
    assert 60 < angles[0][1] < 120 and angles[-1][1] < angles[0][1]  # KP's B moves towards W
    assert all(0 < v for r in rows for v in r["feedback_norm_ratio"])
    assert all(len(r["credit_error"]) == len(r["credit_scale"]) == 3 for r in rows)
    (config,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for cat in layout.category
              for chart in cat.chart}  # fmt: skip
    assert charts["angle(W, B) per layer, degrees"] == [r"diag/feedback_angle/"]
