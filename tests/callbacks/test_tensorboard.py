"""The TensorBoard side, read back through TensorBoard's own HTTP data API, as the browser does.

Two runs (DFA with the Protocol callback, BP with another batch size) into one root; the
runs are named by what they are, every series of the layout exists, the log10 companions
equal log10 of the rows at x = epoch, the floor is a reference series, HParams carries the
method, and Lightning's placeholder hp_metric is gone.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest

from faeval.cli import run
from faeval.runlog import RunLog
from tests.helpers import TINY_RUN, tensorboard_server
from tests.protocol.cli_args import protocol_args

RUNS = {"DFA": "32", "BP": "64"}  # method -> batch size: x = epoch lines them up anyway


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb")
    logs = {}
    for method, batch in RUNS.items():
        extra = protocol_args() if method == "DFA" else []
        cli = run(["fit", "--model", method, *TINY_RUN, "--data.batch_size", batch,
                   "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(root),
                   *extra])  # fmt: skip
        logs[method] = RunLog(Path(cli.trainer.log_dir))
    with tensorboard_server(root / "lightning_logs") as get:
        deadline = time.monotonic() + 60
        while len(get("/data/runs")) < len(RUNS) and time.monotonic() < deadline:
            time.sleep(0.3)
        yield get, logs


def series(get, run_name: str, tag: str) -> dict[int, float]:
    points = get(f"/data/plugin/scalars/scalars?run={run_name}&tag={tag}")
    return {step: value for _, step, value in points}


def test_runs_are_named_by_data_method_and_seed(served):
    get, logs = served
    assert sorted(get("/data/runs")) == ["SyntheticLadder/BP/seed0", "SyntheticLadder/DFA/seed0"]
    assert logs["DFA"].dir.relative_to(logs["DFA"].dir.parents[2]) == Path(
        "SyntheticLadder/DFA/seed0"
    )


def test_every_series_of_the_layout_exists_and_charts_are_log10(served):
    get, _ = served
    layout = get("/data/plugin/custom_scalars/layout")
    tags = get("/data/plugin/scalars/tags")["SyntheticLadder/DFA/seed0"]
    charts = {c["title"]: c for cat in layout["category"] for c in cat["chart"]}
    glance = layout["category"][0]
    assert "collapse at a glance" in glance["title"]
    assert [c["title"].split(" (")[0] for c in glance["chart"]][::-1] == [
        "log10 ‖h_L‖",
        "log10 ‖g_L‖",
        "log10 max growth of ‖h_l‖",
        "test accuracy",
    ]  # fmt: skip  (written reversed: TensorBoard draws margin charts in reverse)
    for chart in charts.values():
        if "margin" in chart:
            for s in chart["margin"]["series"]:
                assert {s["value"], s["lower"], s["upper"]} <= set(tags), chart["title"]
        else:
            for regex in chart["multiline"]["tag"]:
                assert any(re.search(regex, t) for t in tags), (chart["title"], regex)
    # ‖h‖ and ‖g‖ never share an axis; the floor is drawn with ‖g_L‖.
    g_chart = charts["log10 ‖g_L‖ (band: down to the floor of (b), 1e-7)"]["margin"]["series"][0]
    assert g_chart == {"value": "log10/g_L", "lower": "ref/log10_grad_floor", "upper": "log10/g_L"}


@pytest.mark.parametrize("method", RUNS)
def test_log10_series_equal_log10_of_the_rows_at_x_equal_epoch(served, method):
    get, logs = served
    name = f"SyntheticLadder/{method}/seed0"
    rows = logs[method].rows()
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    for tag, key in (("log10/g_L", "g_L"), ("log10/h_L", "h_L"), ("log10/growth", "growth")):
        got = series(get, name, tag)
        assert sorted(got) == [0, 1, 2], tag  # x = epoch, whatever the batch size
        for r in rows:
            assert got[r["epoch"]] == pytest.approx(math.log10(r[key]), abs=1e-5), tag
    for layer in range(len(rows[0]["g_norm"])):
        got = series(get, name, f"log10/g_norm/l{layer}")
        assert got[2] == pytest.approx(math.log10(rows[-1]["g_norm"][layer]), abs=1e-5)
    assert set(series(get, name, "ref/log10_grad_floor").values()) == {-7.0}
    acc = series(get, name, "test/acc")
    assert sorted(acc) == [1, 2] and acc[2] == pytest.approx(rows[-1]["test/acc"], abs=1e-6)


def test_protocol_figures_are_charted(served):
    get, _ = served
    got = series(get, "SyntheticLadder/DFA/seed0", "protocol/null_deep_upper")
    assert sorted(got) == [1, 2]


def test_hparams_carry_the_method_and_no_placeholder_metric(served):
    get, _ = served
    body = {"experimentName": "", "startIndex": 0, "sliceSize": 10, "colParams": [],
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_RUNNING"]}  # fmt: skip
    groups = {g["name"]: g["hparams"] for g in get("/data/plugin/hparams/session_groups", body)[
        "sessionGroups"]}  # fmt: skip
    for method, batch in RUNS.items():
        hp = groups[f"SyntheticLadder/{method}/seed0"]
        assert hp["Method"] == method and hp["Data"] == "SyntheticLadder" and hp["Seed"] == 0
        assert hp["data.batch_size"] == int(batch) and hp["Backbone"] == "ResMLP"
    experiment = get("/data/plugin/hparams/experiment", {"experimentName": ""})
    metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
    assert {"test/acc", "diag/g_L", "diag/growth"} <= metrics and "hp_metric" not in metrics
    tags = get("/data/plugin/scalars/tags")
    assert not any("hp_metric" in t for run_tags in tags.values() for t in run_tags)
