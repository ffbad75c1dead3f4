"""Run folders: claimed atomically, so runs started together never share one."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from faeval.cli import main, run
from faeval.errors import RunFolderTaken
from faeval.runs import CLAIM_FILE, claim, claim_next, holds_run, release_unused, run_name
from tests.helpers import TINY_RUN


def test_a_claimed_folder_is_never_claimed_again(tmp_path):
    first = claim(tmp_path / "DFA" / "seed0")
    assert (first / CLAIM_FILE).is_file() and holds_run(first)
    with pytest.raises(RunFolderTaken, match=r"already holds a run.*--ckpt_path"):
        claim(first)
    assert claim_next(first) == tmp_path / "DFA" / "seed0-run2"
    assert claim_next(first) == tmp_path / "DFA" / "seed0-run3"
    old = tmp_path / "old"  # a run from before claim files: its config says it is a run
    old.mkdir()
    (old / "config.yaml").write_text("x: 1\n")
    with pytest.raises(RunFolderTaken):
        claim(old)


def test_a_run_that_wrote_nothing_gives_its_folder_back(tmp_path):
    empty, used = claim(tmp_path / "a"), claim(tmp_path / "b")
    (used / "diagnostics.jsonl").write_text("{}\n")
    assert release_unused(empty) and not empty.exists()
    assert not release_unused(used) and used.exists()
    assert not release_unused(tmp_path)  # never a folder it did not claim
    shared = claim(tmp_path / "c")  # a sweep's run folder: its run.log is the sweep's
    (shared / "run.log").write_text("faeval: error: ...\n")
    (shared / "config.yaml").write_text("x: 1\n")
    assert release_unused(shared) and not holds_run(shared)
    assert [p.name for p in shared.iterdir()] == ["run.log"]


def test_run_names_fill_their_fields_and_stay_relative():
    assert run_name("{data}/{method}/seed{seed}", data="X", method="DFA", seed=3) == "X/DFA/seed3"
    assert run_name("seed{seed:03d}", seed=3) == "seed003"  # a format spec is plain
    with pytest.raises(ValueError, match="must name a folder below lightning_logs"):
        run_name("/abs/{method}", method="DFA")
    with pytest.raises(ValueError, match="must name a folder below lightning_logs"):
        run_name(".", method="DFA")  # lightning_logs itself
    with pytest.raises(ValueError, match=r"\{seed\.__class__\} is not a field; use \{seed\}"):
        run_name("{seed.__class__}", seed=3)  # once a folder named <class 'int'>


@pytest.mark.slow
def test_eight_runs_started_together_get_eight_folders_with_their_own_files(tmp_path):
    # Same method and seed, so all eight race for lightning_logs/SyntheticLadder/DFA/seed0;
    # each is told apart by its batch size, which its config and its steps must show.
    batches = [8 + 2 * i for i in range(8)]
    logs = [(tmp_path / f"run{b}.log").open("w") for b in batches]

    def command(batch: int) -> list[str]:
        return [sys.executable, "-m", "faeval", "fit", "--model", "DFA", *TINY_RUN,
                "--data.batch_size", str(batch), "--trainer.max_epochs", "1",
                "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip

    procs = [
        subprocess.Popen(command(b), stdout=log, stderr=subprocess.STDOUT)
        for b, log in zip(batches, logs, strict=True)
    ]
    for proc, log in zip(procs, logs, strict=True):
        code = proc.wait(timeout=600)
        log.close()
        assert code == 0, Path(log.name).read_text()[-2000:]
    folders = sorted((tmp_path / "lightning_logs" / "SyntheticLadder" / "DFA").iterdir())
    assert [f.name for f in folders] == ["seed0"] + [f"seed0-run{n}" for n in range(2, 9)]
    seen = set()
    for folder in folders:
        config = yaml.safe_load((folder / "config.yaml").read_text())
        batch = config["data"]["init_args"]["batch_size"]
        rows = [
            json.loads(line) for line in (folder / "diagnostics.jsonl").read_text().splitlines()
        ]
        assert [r["epoch"] for r in rows] == [0, 1]  # its own rows, each epoch once
        assert rows[-1]["step"] == -(-128 // batch)  # the steps of its own batch size
        assert len(list((folder / "checkpoints").glob("*.ckpt"))) == 1
        assert json.loads((folder / CLAIM_FILE).read_text())["pid"] in {p.pid for p in procs}
        seen.add(batch)
    assert seen == set(batches)


def test_a_name_given_twice_is_refused_and_the_first_run_is_left_alone(tmp_path, capsys):
    args = ["fit", "--model", "DFA", *TINY_RUN, "--trainer.max_epochs", "1", "--run_name",
            "study/{method}", "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    first = Path(run(args).trainer.log_dir)
    files = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in first.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert f"{first} already holds a run" in err
    assert {
        p: hashlib.sha256(p.read_bytes()).hexdigest() for p in first.rglob("*") if p.is_file()
    } == files
