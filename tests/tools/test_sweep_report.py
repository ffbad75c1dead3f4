"""tools/sweep.py and tools/report.py on a tiny sweep: runs, resume, failures, tables, plots."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import matplotlib.image
import pytest
import yaml

from tests.helpers import TINY_RUN
from tests.protocol.cli_args import CHEAP

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"faeval_tools_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


sweep, report = load_tool("sweep"), load_tool("report")

SPEC = {
    "seeds": [0, 1],
    "methods": ["DFA"],  # FrozenBlocks joins automatically: 2 methods × 2 seeds
    "args": [*TINY_RUN, "--trainer.max_epochs", "1"],
    "protocol": {"every_n_epochs": 1, "settings": CHEAP},
    "settings": {"tiny": {"model.backbone.w2_std": 0.01}},
}


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    (root / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    assert (
        sweep.main(
            [str(root / "spec.yaml"), "--out", str(root / "out"), "--jobs", "2", "--cores", "2"]
        )
        == 0
    )
    return root


def test_sweep_runs_every_method_and_seed_with_frozen_added(swept, capsys):
    with (swept / "out" / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["method"], r["seed"]) for r in rows) == [
        ("DFA", "0"),
        ("DFA", "1"),
        ("FrozenBlocks", "0"),
        ("FrozenBlocks", "1"),
    ]
    assert all(r["status"] == "ok" and r["epochs"] == "1" for r in rows)
    run_dir = swept / "out" / "runs" / "tiny" / "DFA" / "seed1"
    for name in ("config.yaml", "diagnostics.jsonl", "protocol.jsonl", "status.json"):
        assert (run_dir / name).is_file(), name
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["seed_everything"] == 1
    # Resumable: a second call skips every finished run.
    assert sweep.main([str(swept / "spec.yaml"), "--out", str(swept / "out")]) == 0
    assert "4 already finished, 0 to run" in capsys.readouterr().out


def test_the_seeds_of_a_setting_and_method_train_stacked_each_in_its_own_run_folder(swept):
    for method in ("DFA", "FrozenBlocks"):
        stack = swept / "out" / "stacks" / "tiny" / method / "seeds0-1"
        assert (stack / "run.log").is_file() and (stack / "stack.json").is_file()
        for seed in (0, 1):
            run_dir = swept / "out" / "runs" / "tiny" / method / f"seed{seed}"
            status = json.loads((run_dir / "status.json").read_text())
            assert (
                "--seeds" in status["cmd"]
                and status["cmd"][status["cmd"].index("--seeds") + 1] == "0,1"
            )
            assert (run_dir / "run.log").read_text() == (stack / "run.log").read_text()
            assert list((run_dir / "checkpoints").glob("*.ckpt"))


def test_the_layout_fits_the_machine():
    assert sweep.layout(groups=4, seeds=3, cores=2, gpus=0) == (2, 1, 3)  # a stack per group
    assert sweep.layout(groups=1, seeds=10, cores=2, gpus=0) == (2, 1, 5)  # two stacks of 5
    assert sweep.layout(groups=4, seeds=10, cores=16, gpus=1) == (1, 16, 10)
    runs = [sweep.Run("s", m, seed, ()) for m in ("A", "B") for seed in range(5)]
    stacks = sweep.chunks(runs, 2)
    assert [[r.seed for r in c] for c in stacks] == [[0, 3], [1, 4], [2], [0, 3], [1, 4], [2]]
    assert {c[0].method for c in stacks[:3]} == {"A"}


def test_threads_per_job_and_a_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    spec = {"seeds": [0, 1], "methods": ["DFA"]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    seen = []

    def fake(spec, run, run_dir):  # a process that fails for seed 0 and succeeds for seed 1
        code = (
            "import os, sys, json, pathlib; "
            f"print(os.environ['OMP_NUM_THREADS']); d = pathlib.Path({str(run_dir)!r}); "
            "(d / 'diagnostics.jsonl').write_text(json.dumps({'epoch': 1}) + '\\n'); "
            f"sys.exit({3 if run.seed == 0 else 0})"
        )
        seen.append(run)
        return [sys.executable, "-c", code]

    monkeypatch.setattr(sweep, "command", fake)
    assert (
        sweep.main(
            [
                str(tmp_path / "spec.yaml"),
                "--out",
                str(tmp_path / "out"),
                "--jobs",
                "2",
                "--cores",
                "4",
                "--stack",
                "1",
            ]
        )
        == 1
    )
    assert len(seen) == 4
    with (tmp_path / "out" / "results.csv").open() as fh:
        rows = {(r["method"], r["seed"]): r for r in csv.DictReader(fh)}
    assert rows[("DFA", "0")]["status"] == "failed" and rows[("DFA", "0")]["rc"] == "3"
    assert rows[("DFA", "1")]["status"] == "ok"
    log = (tmp_path / "out" / "runs" / "default" / "DFA" / "seed1" / "run.log").read_text()
    assert log.strip() == "2"  # 4 cores shared by 2 jobs

    # Again: the finished runs are skipped, the failed ones retried, and nothing is lost:
    # each earlier attempt's folder is kept under attempts/.
    args = [str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "out"), "--cores", "4"]
    args += ["--stack", "1"]
    assert sweep.main(args) == 1
    assert len(seen) == 6 and {r.seed for r in seen[4:]} == {0}
    kept = sorted((tmp_path / "out" / "attempts" / "default").glob("*/seed0-*/run.log"))
    assert [p.parts[-3] for p in kept] == ["DFA", "FrozenBlocks"]


def test_report_writes_tables_and_plots_of_the_expected_size(swept):
    out = swept / "report"
    assert report.main([str(swept / "out"), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "### Verdicts (across seeds)" in md and "### Standard pair" in md
    assert "| DFA |" in md and "| FrozenBlocks |" in md and "Runs not reported" not in md
    data = json.loads((out / "report.json").read_text())
    methods = data["settings"]["tiny"]["methods"]
    assert set(methods) == {"DFA", "FrozenBlocks"}
    assert methods["FrozenBlocks"]["verdicts"]["d"]["status"] == "N/A"
    assert [s[0] for s in methods["DFA"]["verdicts"]["a"]["seeds"]] == [0, 1]
    # (d) per seed against that seed's own frozen run.
    runs = {(r["method"], r["seed"]): r for r in data["settings"]["tiny"]["runs"]}
    for seed in (0, 1):
        margin = runs[("DFA", seed)]["pair"]["margin"]
        assert margin == pytest.approx(
            runs[("DFA", seed)]["pair"]["acc"] - runs[("FrozenBlocks", seed)]["pair"]["acc"]
        )
    for name, (w, h) in report.SIZES.items():
        image = matplotlib.image.imread(out / f"tiny_{name}.png")
        assert image.shape[:2] == (round(h * report.DPI), round(w * report.DPI)), name
        assert f"tiny_{name}.png" in md


def test_report_on_partial_mixed_and_empty_sweeps_says_what_is_missing(swept, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(swept / "out", partial)
    shutil.rmtree(partial / "runs" / "tiny" / "DFA" / "seed1")
    status = partial / "runs" / "tiny" / "FrozenBlocks" / "seed1" / "status.json"
    status.write_text(
        json.dumps({**json.loads(status.read_text()), "status": "failed", "error": "boom"})
    )
    assert report.main([str(partial)]) == 0
    md = (partial / "report.md").read_text()
    assert "tiny/DFA/seed1: **missing**" in md
    assert "tiny/FrozenBlocks/seed1: **failed** (boom)" in md
    data = json.loads((partial / "report.json").read_text())
    assert {(r["method"], r["seed"]) for r in data["settings"]["tiny"]["runs"]} == {
        ("DFA", 0),
        ("FrozenBlocks", 0),
    }
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report.main([str(empty)]) == 0
    assert "No finished runs" in (empty / "report.md").read_text()
    assert "0 runs judged" in capsys.readouterr().out


def test_the_reference_sweep_plans_bp_fa_dfa_and_frozen_on_three_seeds(monkeypatch):
    monkeypatch.chdir(TOOLS.parent)  # the spec's base path is relative to the repository
    spec = sweep.load_spec(Path("configs/sweeps/fmnist_reference.yaml"))
    runs = sweep.plan(spec)
    assert sorted({r.method for r in runs}) == ["BP", "DFA", "FA", "FrozenBlocks"]
    assert len(runs) == 12 and {r.seed for r in runs} == {0, 1, 2}
    cmd = sweep.command(spec, runs[0], Path("/tmp/x"))
    assert cmd[cmd.index("--model.backbone.d_hidden") + 1] == "256"
    assert "--trainer.callbacks+=Protocol" in cmd
