"""The verdict engine on scripted logs: each rule at its threshold, seeds, the floor."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from faeval.protocol import Thresholds, judge_run, judge_seeds, run_markdown, run_text
from faeval.protocol.render import interval_text, seed_cell
from faeval.runlog import DEPTH_BASELINE

T = Thresholds()


def row(
    epoch: int,
    growth: float = 1.0,
    g_l: float = 1e-3,
    acc: float | None = 0.5,
    cos: tuple[float, ...] = (0.4, 0.2, 0.1),
) -> dict:
    """A diagnostics row as the callback writes it (cosines None under the floor)."""
    floor = not g_l >= T.grad_floor
    cos_out = [None if floor else c for c in cos]
    return {
        "epoch": epoch,
        "test/acc": acc if epoch else None,
        "growth": growth,
        "h_L": 3.0 * growth,
        "g_L": g_l,
        "h_ratio": [1.0, 1.0],
        "floor_hit": floor,
        "cos": cos_out,
        "cos_l0": cos_out[0],
        "cos_deep": None if floor else sum(cos[1:]) / 2,
        "gamma": None if floor else sum(cos) / 3,
    }


def protocol(
    deep: float = 0.3, null_mean: float = 0.0, null_std: float = 0.05, stability: float = 0.5
) -> dict:
    return {
        "null": {
            "cos": [0.4, deep, deep],
            "null_mean": [0, 0, 0],
            "null_std": [0.05] * 3,
            "deep": deep,
            "deep_mean": null_mean,
            "deep_std": null_std,
            "draws": 8,
        },
        "rho": {
            "rho": [0.3, 0.2, 0.2],
            "positive": [1, 1, 1],
            "negative_mean": [0, 0, 0],
            "negative_std": [0.01] * 3,
        },
        "stability": {
            "credit": stability,
            "gradient": 0.6,
            "layer": 1,
            "batches": 8,
            "batch_size": 128,
        },
    }


def judge(rows, proto=None, frozen=0.4, method="DFA", seed=0):
    return judge_run(rows, protocol() if proto is None else proto, method, frozen, T, seed)


@pytest.mark.parametrize("delta, status", [(-1e-6, "PASS"), (0.0, "PASS"), (1e-6, "FIRES")])
def test_growth_fires_just_above_its_threshold(delta, status):
    rows = [row(0), row(1, growth=T.growth_threshold + delta), row(2, growth=2.0)]
    v = judge(rows).verdicts["a"]
    assert v.status == status
    assert v.figure == pytest.approx(T.growth_threshold + delta)  # max over training


def test_nonfinite_growth_fires():
    assert judge([row(0), row(1, growth=math.inf)]).verdicts["a"].status == "FIRES"


@pytest.mark.parametrize("factor, status", [(1.001, "PASS"), (1.0, "PASS"), (0.999, "FIRES")])
def test_floor_fires_just_below_it(factor, status):
    v = judge([row(0), row(1, g_l=T.grad_floor * factor)]).verdicts["b"]
    assert v.status == status


def test_floor_hit_makes_cosines_unmeasurable():
    rv = judge([row(0), row(1, g_l=1e-10)], protocol(deep=0.9))
    assert rv.verdicts["b"].status == "FIRES"
    assert rv.verdicts["mode2"].status == "UNMEASURABLE"  # a deep cos of 0.9 is not trusted
    assert rv.pair["gamma"] is None and rv.pair["cos_deep"] is None


@pytest.mark.parametrize("delta, status", [(1e-4, "PASS"), (-1e-4, "FIRES")])
def test_depth_fires_just_below_the_margin(delta, status):
    frozen = 0.4
    rows = [row(0), row(1, acc=frozen + T.margin + delta)]
    v = judge(rows, frozen=frozen).verdicts["d"]
    assert v.status == status
    assert v.figure == pytest.approx(T.margin + delta)


def test_depth_needs_the_frozen_accuracy_and_skips_the_baseline_itself():
    rows = [row(0), row(1)]
    assert judge(rows, frozen=None).verdicts["d"].status == "UNMEASURABLE"
    baseline = [{**r, "role": DEPTH_BASELINE} for r in rows]  # what FrozenBlocks writes
    assert judge(baseline, method="FrozenBlocks").verdicts["d"].status == "N/A"


@pytest.mark.parametrize("delta, status", [(1e-6, "PASS"), (-1e-6, "FIRES")])
def test_mode2_fires_just_inside_the_null_band(delta, status):
    band = 0.01 + T.null_sigmas * 0.05
    proto = protocol(deep=band + delta, null_mean=0.01, null_std=0.05)
    assert judge([row(0), row(1)], proto).verdicts["mode2"].status == status


def test_mode2_without_feedback_uses_rho_against_its_negative_control():
    proto = protocol()
    proto["null"] = None
    proto["null_note"] = "not applicable: BP has no random feedback draw to redraw"
    proto["rho"]["rho"] = [1.0, 0.02 + 1e-6, 0.02 + 1e-6]  # band: 0 + 2 × 0.01
    v = judge([row(0), row(1)], proto, method="BP").verdicts["mode2"]
    assert v.status == "PASS" and "not applicable" in v.detail
    proto["rho"]["rho"] = [1.0, 0.02 - 1e-6, 0.02 - 1e-6]
    assert judge([row(0), row(1)], proto, method="BP").verdicts["mode2"].status == "FIRES"


@pytest.mark.parametrize("delta, status", [(0.0, "PASS"), (-1e-6, "FIRES")])
def test_stability_reads_against_its_threshold(delta, status):
    proto = protocol(stability=T.stability_threshold + delta)
    v = judge([row(0), row(1)], proto).verdicts["c"]
    assert v.status == status and v.advisory


def test_missing_protocol_row_is_unmeasurable():
    rv = judge_run([row(0), row(1)], None, "DFA", 0.4, T, 0)
    assert rv.verdicts["c"].status == "UNMEASURABLE"
    assert rv.verdicts["mode2"].status == "UNMEASURABLE"


def test_disagreeing_seeds_are_mixed_and_agreeing_seeds_are_not():
    runs = [judge([row(0), row(1, growth=g)], seed=s) for s, g in ((0, 10.0), (1, 80.0))]
    table = judge_seeds(runs)
    assert table["a"].status == "MIXED"
    assert [(s, st) for s, st, _ in table["a"].seeds] == [(0, "PASS"), (1, "FIRES")]
    assert table["b"].status == "PASS"
    runs = [judge([row(0), row(1, g_l=1e-9)], seed=s) for s in (0, 1)]
    table = judge_seeds(runs)
    assert table["b"].status == "FIRES" and table["mode2"].status == "UNMEASURABLE"


def test_rendering_prints_every_threshold_and_figure():
    rv = judge([row(0), row(1, growth=80.0)])
    text, md = run_text(rv), run_markdown(rv)
    for out in (text, md):
        assert "FIRES" in out and "×80" in out and "50" in out and "1e-07" in out


def depth_runs(margins: list[float], frozen: float = 0.4) -> list:
    """One run per seed whose accuracy beats that seed's FrozenBlocks run by ``margin``."""
    return [
        judge([row(0), row(1, acc=frozen + m)], frozen=frozen, seed=s)
        for s, m in enumerate(margins)
    ]


def test_depth_across_seeds_is_decided_by_the_paired_interval_of_the_margin():
    margins = [0.05, 0.03, 0.01]  # two seeds pass, one fires on its own
    table = judge_seeds(depth_runs(margins))
    d = table["d"]
    low, high = stats.t.interval(0.95, 2, loc=np.mean(margins), scale=stats.sem(margins))
    assert (d.interval.low, d.interval.high) == pytest.approx((low, high), rel=1e-9)
    assert d.interval.threshold == T.margin and not d.clearance
    assert d.status == "MIXED" and d.interval.seeds_to_settle > 3
    text = interval_text("DFA", d)
    assert "MIXED (2 pass, 1 fire" in text and f"About {d.interval.seeds_to_settle} seeds" in text
    assert "95% CI [" in seed_cell(d) and "pp" in seed_cell(d)


def test_seeds_that_agree_are_still_mixed_when_their_interval_holds_the_threshold():
    d = judge_seeds(depth_runs([0.021, 0.025, 0.06]))["d"]  # all pass, mean 0.035, wide
    assert {st for _, st, _ in d.seeds} == {"PASS"}
    assert d.status == "MIXED" and d.interval.low < T.margin < d.interval.high


def test_an_interval_clear_of_the_threshold_decides_even_when_one_seed_disagrees():
    margins = [0.06, 0.065, 0.055, 0.07, 0.06, 0.062, 0.058, 0.015, 0.064, 0.061]
    d = judge_seeds(depth_runs(margins))["d"]
    assert d.status == "PASS" and d.interval.low > T.margin
    assert "although the seeds alone split (9 pass, 1 fire)" in interval_text("FA", d)
    below = judge_seeds(depth_runs([-0.04, -0.05, -0.045]))["d"]
    assert below.status == "FIRES" and below.interval.high < T.margin


def test_mode2_across_seeds_compares_each_seeds_clearance_over_its_own_band():
    deep = [0.30, 0.22, 0.26]
    null_means, null_stds = [0.00, 0.05, 0.02], [0.05, 0.04, 0.06]
    runs = [
        judge([row(0), row(1)], protocol(deep=c, null_mean=m, null_std=sd), seed=s)
        for s, (c, m, sd) in enumerate(zip(deep, null_means, null_stds, strict=True))
    ]
    mode2 = judge_seeds(runs)["mode2"]
    edges = [m + T.null_sigmas * sd for m, sd in zip(null_means, null_stds, strict=True)]
    clearance = [c - e for c, e in zip(deep, edges, strict=True)]
    assert mode2.clearance and mode2.interval.threshold == 0.0
    assert mode2.interval.mean == pytest.approx(np.mean(clearance))
    low, high = stats.t.interval(0.95, 2, loc=np.mean(clearance), scale=stats.sem(clearance))
    assert (mode2.interval.low, mode2.interval.high) == pytest.approx((low, high), rel=1e-9)
    assert mode2.status == ("PASS" if low > 0 else "FIRES" if high < 0 else "MIXED")
    assert "over band 95% CI" in seed_cell(mode2)


def test_one_measurable_seed_gives_no_interval_and_keeps_its_own_verdict():
    runs = [*depth_runs([0.05]), judge([row(0), row(1)], frozen=None, seed=1)]
    d = judge_seeds(runs)["d"]
    assert d.status == "PASS" and d.interval is None
    assert "one measurable seed, no interval" in interval_text("BP", d)
