"""The run log: one rule for deep means, rows written and read back, the logger's view, a
sweep's rows in one call."""

from __future__ import annotations

import json
import math
import sys

import pytest

from faeval.runlog import (
    RunLog,
    deep_mean,
    epoch_scalars,
    load_sweep,
    mean_measured,
    mean_std,
    protocol_scalars,
)


def test_deep_mean_is_the_mean_over_layers_one_to_L():
    assert deep_mean([0.9, 0.2, 0.4]) == pytest.approx(0.3)
    assert deep_mean([0.9]) is None  # no deep layer


@pytest.mark.parametrize("bad", [None, math.nan, math.inf])
def test_one_unmeasured_layer_makes_the_mean_unmeasured(bad):
    # An average that dropped the layer would look valid while hiding it.
    assert deep_mean([0.9, 0.2, bad]) is None
    assert mean_measured([0.1, bad]) is None
    assert mean_measured([]) is None


def test_mean_std_uses_the_sample_std_of_what_was_measured():
    mean, std = mean_std([1.0, 2.0, None, 3.0])
    assert mean == 2.0 and std == pytest.approx(1.0)  # stdev of 1, 2, 3 (n − 1)
    assert mean_std([5.0]) == (5.0, 0.0) and mean_std([None]) is None


def test_rows_round_trip_in_order(tmp_path):
    log = RunLog(tmp_path / "run")
    rows = [{"epoch": e, "g_L": 10.0**-e, "cos": [None, 0.5]} for e in range(3)]
    for row in rows:
        log.append(row)
    log.append_protocol({"epoch": 2})
    assert log.rows() == rows and log.last_row() == rows[-1]
    assert log.protocol_rows() == [{"epoch": 2}]
    assert RunLog(tmp_path / "nothing").rows() == [] and RunLog(tmp_path).last_row() is None


def test_the_loggers_view_turns_unmeasured_into_nan():
    row = {"h_norm": [1.0, 2.0], "g_norm": [1e-3, 1e-4], "cos": [0.5, None], "h_ratio": [2.0],
           "h_L": 2.0, "g_L": 1e-4, "growth": 1.5, "probe_acc": 0.5, "probe_loss": 1.0,
           "floor_hit": False}  # fmt: skip
    out = epoch_scalars(row)
    assert out["diag/cos/l0"] == 0.5 and math.isnan(out["diag/cos/l1"])
    assert out["diag/h_ratio/l1"] == 2.0 and out["diag/floor"] == 0.0
    assert not any(k.startswith(("diag/credit", "diag/feedback")) for k in out)  # older rows
    row |= {"credit_error": [1e-8, None], "feedback_layers": ["embed.1", "head"],
            "feedback_angle": [89.0, 45.0], "feedback_norm_ratio": [1.5, 0.5]}  # fmt: skip
    out = epoch_scalars(row)
    assert out["diag/credit_error/l0"] == 1e-8 and math.isnan(out["diag/credit_error/l1"])
    assert out["diag/feedback_angle/head"] == 45.0
    assert out["diag/feedback_norm_ratio/embed.1"] == 1.5
    proto = {"rho": {"rho": [0.9, 0.4, math.nan], "positive": [1, 1, 1],
                     "negative_mean": [0, 0.1, 0.3]},
             "null": None, "seconds": {"rho": 1.0, "null": 0.5}}  # fmt: skip
    out = protocol_scalars(proto)
    assert math.isnan(out["protocol/rho_deep"])  # one deep layer unmeasured
    assert out["protocol/rho_negative_deep"] == pytest.approx(0.2)
    assert out["protocol/seconds"] == 1.5 and "protocol/cos_deep" not in out


RUNS = [("d256", "DFA", 0, 3), ("d256", "DFA", 1, 2), ("d256", "mypkg.Mine", 0, 1),
        ("d512", "BP", 2, 2)]  # fmt: skip


def write_sweep(root) -> None:
    """A sweep folder as faeval sweep lays it out, its rows written by RunLog."""
    for setting, method, seed, epochs in RUNS:
        log = RunLog(root / "runs" / setting / method / f"seed{seed}")
        for e in range(epochs):
            log.append({"epoch": e, "method": method.rsplit(".", 1)[-1], "seed": seed,
                        "g_L": 10.0**-e, "cos": [0.5, None]})  # fmt: skip
    (root / "runs" / "d256" / "DFA" / "notes").mkdir()  # not a run folder


def test_load_sweep_returns_exactly_the_rows_of_the_run_files(tmp_path):
    write_sweep(tmp_path)
    records = load_sweep(tmp_path)
    # Independently: every line of every diagnostics.jsonl under runs/, parsed here.
    expected = {}
    for path in (tmp_path / "runs").glob("*/*/seed*/diagnostics.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            expected[(path.parts[-4], str(path.parent), row["epoch"])] = row
    assert len(records) == len(expected) == 8
    for record in records:
        key = (record["setting"], record["run_dir"], record["epoch"])
        assert {k: v for k, v in record.items() if k not in ("setting", "run_dir")} == expected[key]
    assert [(r["setting"], r["seed"], r["epoch"]) for r in records[:3]] == [
        ("d256", 0, 0), ("d256", 0, 1), ("d256", 0, 2)
    ]  # fmt: skip
    mine = [r for r in records if "mypkg.Mine" in r["run_dir"]]
    assert [r["method"] for r in mine] == ["Mine"]  # the row's own (class) name


def test_load_sweep_as_a_frame_holds_the_same_records(tmp_path):
    write_sweep(tmp_path)
    frame = load_sweep(tmp_path, as_frame=True)
    assert list(frame.columns[:3]) == ["setting", "method", "seed"] and len(frame) == 8
    assert frame.to_dict("records") == load_sweep(tmp_path)
    assert frame.groupby("setting")["epoch"].count().to_dict() == {"d256": 6, "d512": 2}


def test_load_sweep_without_pandas_still_gives_records_and_says_how_to_get_a_frame(
    tmp_path, monkeypatch
):
    write_sweep(tmp_path)
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if not installed
    assert len(load_sweep(tmp_path)) == 8
    with pytest.raises(ImportError, match="needs pandas: pip install pandas"):
        load_sweep(tmp_path, as_frame=True)
    with pytest.raises(FileNotFoundError, match="no runs/ folder"):
        load_sweep(tmp_path / "runs")
