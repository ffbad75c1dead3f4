"""The study's TensorBoard view, read back through TensorBoard's HTTP data API: one run per
method holding the median and range of its seeds (computed here from the rows), the reference
lines once in a run of their own, a layout whose first category compares methods in margin
charts and lays out no chart without data, nothing of the seeds' eval or baseline folders."""

from __future__ import annotations

import math
import statistics

import pytest

from faeval.callbacks.tensorboard import FEEDBACK_CATEGORY, LAYOUT, PROTOCOL_CATEGORY, write_layout
from faeval.runlog import RunLog
from faeval.study.tensorboard import GLANCE, write_method_runs
from tests.helpers import tensorboard_server
from tests.study.fake_sweep import EPOCHS, METHODS, SEEDS, write_fake_sweep


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = write_fake_sweep(tmp_path_factory.mktemp("fake"))
    # An evaluation folder inside a run: not a run of the study view.
    RunLog(root / "runs" / "tiny" / "DFA" / "seed0" / "eval" / "test-last").append({"epoch": 0})
    logdir = write_method_runs(root)
    with tensorboard_server(logdir) as get:
        yield root, get


def series(get, run: str, tag: str) -> dict[int, float]:
    return {step: v for _, step, v in get(f"/data/plugin/scalars/scalars?run={run}&tag={tag}")}


def test_one_run_per_method_and_one_ref_run(served):
    _, get = served
    assert sorted(get("/data/runs")) == sorted([f"tiny/{m}" for m in METHODS] + ["tiny/ref"])


@pytest.mark.parametrize("method", METHODS)
def test_each_method_run_holds_the_median_and_range_of_its_seeds(served, method):
    root, get = served
    rows = [RunLog(root / "runs" / "tiny" / method / f"seed{s}").rows() for s in SEEDS]
    for tag, key in (("log10/h_L", "h_L"), ("log10/g_L", "g_L")):
        per_epoch = [[math.log10(r[e][key]) for r in rows] for e in range(EPOCHS + 1)]
        run = f"tiny/{method}"
        mid, low, high = (series(get, run, tag + s) for s in ("", "/seed_min", "/seed_max"))
        assert sorted(mid) == list(range(EPOCHS + 1))  # x = epoch
        for e, values in enumerate(per_epoch):  # the data table keeps float32
            assert mid[e] == pytest.approx(statistics.median(values), rel=1e-6)
            assert low[e] == pytest.approx(min(values), rel=1e-6)
            assert high[e] == pytest.approx(max(values), rel=1e-6)
    acc = [[r[e]["test/acc"] for r in rows] for e in range(1, EPOCHS + 1)]
    got = series(get, f"tiny/{method}", "test/acc")
    assert sorted(got) == list(range(1, EPOCHS + 1))  # no accuracy at initialisation
    assert [got[e] for e in sorted(got)] == pytest.approx([statistics.median(a) for a in acc])


def test_the_floor_is_drawn_once_in_the_ref_run(served):
    _, get = served
    floor = series(get, "tiny/ref", "log10/g_L")
    assert sorted(floor) == list(range(EPOCHS + 1))
    assert list(floor.values()) == pytest.approx([-7.0] * (EPOCHS + 1))
    tags = get("/data/plugin/scalars/tags")
    assert not any(t.startswith("ref/") for run in tags.values() for t in run)


def test_the_layout_compares_methods_first_in_margin_charts_none_empty(served):
    _, get = served
    layout = get("/data/plugin/custom_scalars/layout")
    assert layout["category"][0]["title"] == GLANCE
    tags = get("/data/plugin/scalars/tags")
    present = {t for run in tags.values() for t in run}
    titles = []
    for category in layout["category"]:
        for chart in category["chart"]:
            assert "margin" in chart, chart["title"]  # margin charts are never smoothed
            for s in chart["margin"]["series"]:
                assert {s["value"], s["lower"], s["upper"]} <= present, chart["title"]
            titles.append(chart["title"])
    # Mode 2's clearance: DFA's null band is logged; test accuracy and ‖h_L‖ for all.
    glance = [c["title"] for c in layout["category"][0]["chart"]]
    assert any(t.startswith("Mode 2") for t in glance) and "test accuracy" in glance
    assert "cos(a_l, g_l), l = 3" in titles and "cos(a_l, g_l), l = 4" not in titles


class Recorder:
    """A logger whose experiment records the layout it is given."""

    def __init__(self):
        self.experiment = self
        self.layouts = []

    def add_custom_scalars(self, layout):
        self.layouts.append(layout)


@pytest.mark.parametrize(("protocol", "feedback"), [(True, True), (False, True), (False, False)])
def test_a_run_lays_out_only_the_categories_it_can_fill(protocol, feedback):
    logger = Recorder()
    write_layout(logger, protocol=protocol, feedback=feedback)
    (layout,) = logger.layouts
    assert (PROTOCOL_CATEGORY in layout) == protocol
    assert (FEEDBACK_CATEGORY in layout) == feedback
    assert next(iter(layout)) == next(iter(LAYOUT))
    for category, charts in layout.items():  # margin charts reversed, as TensorBoard draws
        margins = [t for t, c in LAYOUT[category].items() if c[0] == "Margin"]
        assert [t for t, c in charts.items() if c[0] == "Margin"] == margins[::-1]
