"""A sweep's spec: overridden from the command line, checked whole before any run starts."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from faeval.errors import ConfigError
from faeval.study import sweep
from faeval.study.plan import plan
from faeval.study.spec import load_spec, parse_set
from tests.helpers import TINY_RUN
from tests.study.sweeps import ROOT

GOOD = {"seeds": [0, 1], "methods": ["DFA"], "protocol": False,
        "args": [*TINY_RUN, "--trainer.max_epochs", "1"]}  # fmt: skip


def write(tmp_path, spec: dict, name: str = "spec.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"settings": {"wide": {"model.backbone.d_hiden": 16}}}, "setting 'wide', method DFA"),
        ({"settings": {"fast": {"model.optimizer.lr": "abc"}}}, "setting 'fast', method DFA"),
        ({"seeds": [0, 0]}, "names 0 twice"),
        ({"methods": ["DFAA"]}, "did you mean DFA?"),
        ({"base": "nowhere.yaml"}, "relative to the spec's folder"),
        ({"args": [*TINY_RUN, "--trainer.max_epoks", "1"]}, "--trainer.max_epoks"),
    ],
)
def test_a_bad_spec_exits_2_before_any_run_folder_exists(tmp_path, capsys, change, named):
    spec = write(tmp_path, {**GOOD, **change})
    out = tmp_path / "out"
    assert sweep.main([str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err, err
    assert all(line.startswith("faeval sweep") for line in err.strip().splitlines()), err
    assert not out.exists()


def test_every_problem_is_one_line_naming_its_setting_and_method(tmp_path, capsys):
    settings = {"a": {"model.backbone.d_hiden": 3}, "b": {"model.backbone.num_blocks": "x"}}
    spec = write(tmp_path, {**GOOD, "settings": settings})
    assert sweep.main([str(spec), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    named = sorted(line.split(": ")[2] for line in lines[:-1])
    assert named == [f"setting '{s}', method {m}" for s in "ab" for m in ("DFA", "FrozenBlocks")]
    assert lines[-1].endswith("nothing was started")


def test_the_command_line_overrides_seeds_methods_and_options(tmp_path, capsys):
    spec = write(tmp_path, {**GOOD, "settings": {"a": {}, "b": {"model.backbone.w2_std": 0.1}}})
    args = [str(spec), "--out", str(tmp_path / "out"), "--dry_run", "--seeds", "3-5",
            "--methods", "FA,DFA", "--set", "trainer.max_epochs=2"]  # fmt: skip
    assert sweep.main(args) == 0
    printed = capsys.readouterr().out
    assert "18 runs" in printed  # 2 settings × (FA, DFA, FrozenBlocks) × seeds 3, 4, 5
    commands = [line for line in printed.splitlines() if " -m faeval fit " in line]
    # --set comes last: it wins over the spec's own args ("--trainer.max_epochs 1")
    assert commands and all(c.rsplit("--trainer.max_epochs ", 1)[1][0] == "2" for c in commands)
    assert all("--seeds 3,4,5" in c or "--seed_everything" in c for c in commands)
    assert sum("--model.backbone.w2_std 0.1" in c for c in commands) == len(commands) // 2
    assert not (tmp_path / "out").exists()  # --dry_run writes nothing
    assert parse_set("model.optimizer.lr=0.001") == ("model.optimizer.lr", 0.001)
    assert parse_set("--trainer.precision=64") == ("trainer.precision", 64)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set("trainer.max_epochs")


def test_base_is_relative_to_the_spec_file_not_the_working_directory(tmp_path, monkeypatch):
    folder = tmp_path / "study"
    folder.mkdir()
    shutil.copy(ROOT / "configs" / "fmnist_dfa_quickstart.yaml", folder / "base.yaml")
    spec = write(folder, {**GOOD, "base": "base.yaml"})
    monkeypatch.chdir(tmp_path)  # elsewhere
    loaded = load_spec(spec)
    assert loaded["base"] == str((folder / "base.yaml").resolve())
    # The shipped sweeps load from any folder.
    for path in (ROOT / "configs" / "sweeps").glob("*.yaml"):
        assert plan(load_spec(path)), path


def test_a_dry_run_of_a_resolved_spec_prints_the_plan_and_sweep_json_records_it(tmp_path, capsys):
    spec = write(tmp_path, GOOD)
    out = tmp_path / "out"
    # (a real sweep writes sweep.json with the spec as resolved: overrides included)
    from faeval.study.plan import plan as planned
    from faeval.study.sweep import write_plan

    resolved = load_spec(spec, seeds="7")
    out.mkdir()
    write_plan(out, spec, resolved, planned(resolved))
    record = json.loads((out / "sweep.json").read_text())
    assert record["seeds"] == [7] and record["resolved"]["seeds"] == [7]
    assert {r["seed"] for r in record["runs"]} == {7}
