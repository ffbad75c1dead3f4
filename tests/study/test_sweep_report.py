"""faeval sweep and faeval report on a tiny sweep: runs, resume, failures, tables, plots."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from functools import partial
from pathlib import Path

import matplotlib.image
import pytest
import yaml

from faeval.cli import known_names
from faeval.runend import END_FILE, write_end
from faeval.runlog import load_sweep
from faeval.study import execute, layout, plan
from faeval.study import spec as specs
from tests.helpers import TINY_RUN
from tests.study.sweeps import ROOT, report, sweep

#: Real sweeps and script runs, each a few seconds: outside the fast lane.
pytestmark = [pytest.mark.slow]


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
    assert "4 runs: 4 finished, 0 diverged, 0 to run" in capsys.readouterr().out


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
    assert layout.layout(groups=4, seeds=3, cores=2, gpus=0) == (2, 1, 3)  # a stack per group
    assert layout.layout(groups=1, seeds=10, cores=2, gpus=0) == (2, 1, 5)  # two stacks of 5
    assert layout.layout(groups=4, seeds=10, cores=16, gpus=1) == (1, 16, 10)
    for seeds in range(1, 70):  # CPU: stacks of at most CPU_STACK, in as few full rounds as can be
        processes, _, stack = layout.layout(groups=1, seeds=seeds, cores=2, gpus=0)
        stacks = -(-seeds // stack)
        rounds = -(-seeds // (2 * layout.CPU_STACK))  # the fewest rounds of 2 processes
        assert stack <= layout.CPU_STACK and -(-stacks // processes) == rounds, seeds
    sizes = [len(c) for c in layout.chunks([plan.Run("s", "DFA", s, ()) for s in range(17)], 5)]
    assert sizes == [5, 4, 4, 4]  # 17 seeds on 2 cores: two rounds, both processes busy
    assert layout.slurm_stack(seeds=10, gpus=1) == 10 and layout.slurm_stack(seeds=10, gpus=0) == 8
    runs = [plan.Run("s", m, seed, ()) for m in ("FA", "DFA") for seed in range(5)]
    stacks = layout.chunks(runs, 2)
    assert [[r.seed for r in c] for c in stacks] == [[0, 3], [1, 4], [2], [0, 3], [1, 4], [2]]
    assert {c[0].method for c in stacks[:3]} == {"FA"}


def test_threads_per_job_and_a_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    spec = {"seeds": [0, 1], "methods": ["DFA"], "args": TINY_RUN}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    seen = []

    def fake(spec, run, run_dir):  # a process that fails for seed 0 and succeeds for seed 1
        code = (
            "import os, sys, json, pathlib; from faeval.runend import write_end; "
            f"print(os.environ['OMP_NUM_THREADS']); d = pathlib.Path({str(run_dir)!r}); "
            "(d / 'diagnostics.jsonl').write_text(json.dumps({'epoch': 1}) + '\\n'); "
            f"write_end(d, 'finished', 'planned') if {run.seed} else None; "
            f"sys.exit({3 if run.seed == 0 else 0})"
        )
        seen.append(run)
        return [sys.executable, "-c", code]

    monkeypatch.setattr(execute, "command", fake)
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


@pytest.mark.parametrize("stack", ["2", "1"])
def test_a_run_that_fails_before_its_first_row_is_recorded_with_its_log(tmp_path, stack):
    # faeval gives back the run folders it claimed; the sweep's run.log and status stay.
    spec = {"seeds": [0, 1], "methods": ["DFA"], "protocol": False,
            "args": ["--data", "FashionMNIST", "--data.data_dir", "nowhere"]}  # fmt: skip
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    assert sweep.main([str(tmp_path / "spec.yaml"), "--out", str(out), "--stack", stack]) == 1
    for run_dir in out.glob("runs/*/*/seed*"):
        status = json.loads((run_dir / "status.json").read_text())
        assert status["status"] == "failed" and status["rc"] == 2
        assert "faeval: error: no Fashion-MNIST file" in status["error"]
        assert "faeval: error: no Fashion-MNIST file" in (run_dir / "run.log").read_text()
    assert len(list(out.glob("runs/*/*/seed*"))) == 4


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
        assert f"tiny_{name}.png" in md and f"tiny_{name}.pdf" in md
        pdf = (out / f"tiny_{name}.pdf").read_bytes()
        # A vector file with its text as embedded TrueType fonts, no raster image inside.
        assert pdf.startswith(b"%PDF") and b"/FontFile2" in pdf and b"/Subtype /Image" not in pdf


def test_report_states_the_budget_everywhere_and_warns_that_it_is_short(swept, monkeypatch):
    titles = []
    save = report.save

    def keep_title(fig, title, path):
        titles.append(title)
        save(fig, title, path)

    monkeypatch.setattr(report, "save", keep_title)
    out = swept / "report-budget"
    assert report.main([str(swept / "out"), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    budget = "SyntheticLadder · ResMLP d_hidden=8 num_blocks=2"
    head = md.split("## Setting")[0]
    assert "| tiny | SyntheticLadder | ResMLP d_hidden=8 num_blocks=2 | 1 | 4 | 0, 1 |" in head
    assert "budget shorter than the reference's 100 epochs" in head
    assert f"Budget: {budget} · 1 epochs × 4 batches per epoch · seeds 0, 1." in md
    assert "**Warning: short budget.** These runs trained 1 epochs, the reference results 100" in md
    assert len(titles) == len(report.SIZES)
    assert all(budget in t and "1 epochs × 4 batches per epoch · seeds 0, 1" in t for t in titles)
    # Budget-dependent verdicts carry the mark: (d) and Mode 2 always; (a), (b) unless fired.
    data = json.loads((out / "report.json").read_text())["settings"]["tiny"]
    assert data["budget"]["epochs"] == "1" and data["budget"]["seeds"] == [0, 1]
    dfa = data["methods"]["DFA"]
    assert {"d", "mode2"} <= set(dfa["budget_dependent"]) and "c" not in dfa["budget_dependent"]
    row = next(line for line in md.splitlines() if line.startswith("| DFA |"))
    assert row.count(report.SHORT.strip()) == len(dfa["budget_dependent"])
    # How sure: (d) across two seeds is decided by its interval, explained in words.
    d = dfa["verdicts"]["d"]
    assert d["interval"]["n"] == 2 and d["interval"]["threshold"] == 0.02
    assert "### How sure (across seeds)" in md and "DFA, (d) depth utilisation: the margin" in md
    assert report.main([str(swept / "out"), "--out", str(out / "long"),
                        "--reference_epochs", "1"]) == 0  # fmt: skip
    assert "Warning" not in (out / "long" / "report.md").read_text()


def test_load_sweep_gives_the_rows_the_sweep_wrote(swept):
    records = load_sweep(swept / "out")
    files = sorted((swept / "out" / "runs").glob("*/*/seed*/diagnostics.jsonl"))
    rows = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert len(records) == len(rows) == 8  # 4 runs × (init + 1 epoch)
    strip = [{k: v for k, v in r.items() if k not in ("setting", "run_dir")} for r in records]
    order = partial(json.dumps, sort_keys=True)
    assert sorted(strip, key=order) == sorted(rows, key=order)
    assert {r["setting"] for r in records} == {"tiny"}


def test_report_on_partial_mixed_and_empty_sweeps_says_what_is_missing(swept, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(swept / "out", partial)
    shutil.rmtree(partial / "runs" / "tiny" / "DFA" / "seed1")
    status = partial / "runs" / "tiny" / "FrozenBlocks" / "seed1" / "status.json"
    status.write_text(
        json.dumps({**json.loads(status.read_text()), "status": "failed", "error": "boom"})
    )
    write_end(status.parent, "failed", "RuntimeError: boom")  # as the run records it
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
    spec = specs.load_spec(ROOT / "configs/sweeps/fmnist_reference.yaml")
    runs = plan.plan(spec)
    assert sorted({r.method for r in runs}) == ["BP", "DFA", "FA", "FrozenBlocks"]
    assert len(runs) == 12 and {r.seed for r in runs} == {0, 1, 2}
    cmd = plan.command(spec, runs[0], Path("/tmp/x"))
    assert cmd[cmd.index("--model.backbone.d_hidden") + 1] == "256"
    assert "--trainer.callbacks+=Protocol" in cmd


def test_a_sweep_started_again_continues_an_unfinished_run_from_its_checkpoint(swept, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(swept / "out", out)
    run_dir = out / "runs" / "tiny" / "DFA" / "seed1"
    for name in ("status.json", END_FILE):  # its process was killed: no record, a last.ckpt
        (run_dir / name).unlink()
    before = (run_dir / "diagnostics.jsonl").read_text()
    spec = yaml.safe_load((swept / "spec.yaml").read_text())
    spec["args"] += ["--trainer.max_epochs", "2"]  # the budget it had not reached
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert sweep.main([str(tmp_path / "spec.yaml"), "--out", str(out), "--dry_run"]) == 0
    assert sweep.main([str(tmp_path / "spec.yaml"), "--out", str(out)]) == 0
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "ok" and status["continued"] == 1
    assert "--ckpt_path" in status["cmd"]
    rows = (run_dir / "diagnostics.jsonl").read_text()
    assert rows.startswith(before)  # epochs 0 and 1 kept, epoch 2 appended
    assert [json.loads(line)["epoch"] for line in rows.splitlines()] == [0, 1, 2]
    assert not (out / "attempts").exists()  # continued in place, nothing set aside


def test_the_second_round_sweep_plans_every_new_method_with_the_reference_settings():
    spec = specs.load_spec(ROOT / "configs/sweeps/fmnist_second_round.yaml")
    reference = specs.load_spec(ROOT / "configs/sweeps/fmnist_reference.yaml")
    runs = plan.plan(spec)
    new = {"LayerFA", "USF", "BRSF", "FRSF", "KP", "DRTP", "PC"}
    assert {r.method for r in runs} == new | {"FrozenBlocks"}
    assert new <= set(known_names()["model"])
    assert len(runs) == 24 and {r.seed for r in runs} == {0, 1, 2}
    for key in ("base", "seeds", "args", "protocol", "settings"):
        assert spec[key] == reference[key], key


def test_only_methods_that_stack_are_stacked_the_others_run_one_seed_per_process():
    runs = plan.plan(specs.load_spec(ROOT / "configs/sweeps/fmnist_second_round.yaml"))
    sizes = {}
    for stack in layout.chunks(runs, stack=3):
        assert len({r.method for r in stack}) == 1
        sizes.setdefault(stack[0].method, []).append(len(stack))
    every = ("LayerFA", "USF", "BRSF", "FRSF", "KP", "DRTP", "PC", "FrozenBlocks")
    assert sizes == {m: [3] for m in every}  # each one's 3 seeds in one process
    # On a CPU the methods measured slower stacked run one seed per process, unless --stack.
    alone = layout.cpu_alone(gpus=0, stack_given=False)
    assert alone == set(layout.CPU_ALONE) and "PC" in alone
    assert layout.cpu_alone(gpus=1, stack_given=False) == layout.cpu_alone(0, True) == set()
    sizes = {}
    for stack in layout.chunks(runs, stack=3, alone=alone):
        sizes.setdefault(stack[0].method, []).append(len(stack))
    assert sizes == {m: [1, 1, 1] if m in alone else [3] for m in every}


def test_a_sweep_started_again_continues_an_unfinished_stack_from_its_checkpoint(
    swept, tmp_path, capsys
):
    out = tmp_path / "out"
    shutil.copytree(swept / "out", out)  # stack.json names its seeds' folders relatively
    runs = [out / "runs" / "tiny" / "DFA" / f"seed{seed}" for seed in (0, 1)]
    stack = out / "stacks" / "tiny" / "DFA" / "seeds0-1"
    for run_dir in runs:
        for name in ("status.json", END_FILE):  # their stack was killed: no record, a last.ckpt
            (run_dir / name).unlink()
    before = [(run_dir / "diagnostics.jsonl").read_text() for run_dir in runs]
    spec = yaml.safe_load((swept / "spec.yaml").read_text())
    spec["args"] += ["--trainer.max_epochs", "2"]  # the budget it had not reached
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    # Cut otherwise now (one seed per process), the stack still continues as it was cut.
    args = [str(tmp_path / "spec.yaml"), "--out", str(out), "--stack", "1"]
    assert sweep.main([*args, "--dry_run"]) == 0
    printed = capsys.readouterr().out
    assert "(2 continuing from their last checkpoint)" in printed
    assert "--seeds 0,1 " in printed and str(stack / "checkpoints" / "last.ckpt") in printed
    assert sweep.main(args) == 0
    for run_dir, rows_before in zip(runs, before, strict=True):
        status = json.loads((run_dir / "status.json").read_text())
        assert status["status"] == "ok" and status["continued"] == 1
        assert "--seeds" in status["cmd"] and "--ckpt_path" in status["cmd"]
        rows = (run_dir / "diagnostics.jsonl").read_text()
        assert rows.startswith(rows_before)  # epochs 0 and 1 kept, epoch 2 appended
        assert [json.loads(line)["epoch"] for line in rows.splitlines()] == [0, 1, 2]
        assert "[sweep] continuing from checkpoints/last.ckpt" in (run_dir / "run.log").read_text()
    assert not (out / "attempts").exists()  # continued in place, nothing set aside

    # A run started afresh (here: its earlier attempt failed) sets aside every stack that
    # held its seed, so that no later sweep continues a stale stack into its new folder; its
    # stack-mate, unfinished, continues alone from its own last.ckpt (its lone run's).
    write_end(runs[0], "failed", "RuntimeError: a bug")
    (runs[1] / END_FILE).unlink()
    assert sweep.main(args) == 0
    assert [p.parent.name for p in (out / "attempts" / "stacks" / "tiny").glob("*/seeds0-1-*")] == [
        "DFA"
    ]
    assert [p.name[:5] for p in (out / "attempts" / "tiny" / "DFA").iterdir()] == ["seed0"]
    for run_dir, resumed in zip(runs, (False, True), strict=True):
        status = json.loads((run_dir / "status.json").read_text())
        assert status["status"] == "ok" and bool(status["continued"]) is resumed
        assert "--seeds" not in status["cmd"]  # --stack 1: one process per run
        assert ("--ckpt_path" in status["cmd"]) is resumed
    assert not stack.exists()
