"""What a user sees besides the curves: a log file fit for grep, help that starts with faeval,
evaluation that never touches a run, the card's own command, every backbone on every data set.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from faeval.cli import known_names, main, run
from faeval.errors import ConfigError, user_error
from tests.helpers import QUIET, TINY_RUN

TABLE_ROW = re.compile(r"^  (layer|‖h_l‖|‖g_l‖|cos|rows:) ")


@pytest.mark.slow
def test_a_log_file_gets_a_few_lines_per_epoch_and_every_table_on_its_own_lines(tmp_path):
    epochs = 2
    cmd = [sys.executable, "-m", "faeval", "fit", "--model", "DFA", *TINY_RUN,
           "--data.n_train", "256", "--data.batch_size", "16",  # 16 batches an epoch
           "--diagnostics.verbose", "true", "--trainer.enable_progress_bar", "true",
           "--trainer.max_epochs", str(epochs), "--trainer.enable_model_summary", "true",
           "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    with (tmp_path / "run.log").open("w") as log:  # stdout is a file, as in a cluster job
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
    text = (tmp_path / "run.log").read_text()
    assert "\r" not in text and "Tip:" not in text and "GPU available" not in text
    # The model summary, without Lightning's FLOPs column of zeros (no example input)
    assert "Trainable params" in text and "FLOPs" not in text and "Total Flops" not in text
    assert "Trainer already configured" not in text  # nor Lightning's note about it
    heads = [line for line in text.splitlines() if line.startswith("[faeval] epoch")]
    tables = [h for h in heads if re.match(r"\[faeval\] epoch \d+( \(init\))?  ", h)]
    assert len(tables) == epochs + 1  # init + every epoch, each at the start of a line
    assert text.count("[faeval] epoch") == len(heads)  # none glued behind other output
    other = [line for line in text.splitlines() if line not in tables and not TABLE_ROW.match(line)]
    progress = sum(len(line) + 1 for line in other if line.startswith("[faeval] epoch"))
    assert progress / epochs < 400, other  # a few lines an epoch, not ~160 bytes a batch


def test_help_starts_with_what_faeval_is_and_its_own_options(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert top.startswith("usage: faeval") and "faeval trains backprop" in top
    assert "predict" not in top and "faeval audit RUN" in top
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    fit = capsys.readouterr().out
    assert fit.splitlines()[0].startswith("usage: faeval") and "--model NAME --data NAME" in fit
    assert (
        fit.index("--model CONFIG")
        < fit.index("--diagnostics.grad_floor")
        < fit.index("--trainer.accelerator ")
    )
    assert fit.index("--floor_stop") < fit.index("--trainer.accelerator")
    with pytest.raises(SystemExit):
        main(["audit", "--help"])
    audit = capsys.readouterr().out
    assert "audit RUN_OR_CHECKPOINT" in audit.splitlines()[0]
    assert audit.index("--thresholds.margin") < audit.index("--trainer.accelerator")


#: Options only faeval fit acts on.
FIT_OPTIONS = ("--seeds", "--stack.", "--checkpoint_every_n_steps", "--floor_stop", "--run_name")


@pytest.mark.parametrize("command", ["fit", "test", "validate", "audit"])
def test_each_command_s_help_lists_its_own_options(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    listed = [o for o in FIT_OPTIONS if re.search(rf"^\s+{re.escape(o)}", text, re.M)]
    assert listed == (list(FIT_OPTIONS) if command == "fit" else []), listed
    assert "--ckpt_path" in text and "--trainer.accelerator" in text
    if command != "fit":
        assert "Options of this command:" in text and "--stack CONFIG" not in text


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("command", ["test", "validate"])
def test_evaluating_a_run_leaves_every_file_of_it_as_it_was(tmp_path, command, capsys):
    cli = run(["fit", "--model", "DFA", *TINY_RUN, "--trainer.max_epochs", "1",
               "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    run_dir = Path(cli.trainer.log_dir)
    before = _hashes(run_dir)
    main([command, str(run_dir), *QUIET])
    main([command, str(run_dir), *QUIET])  # twice: each evaluation gets its own folder
    after = _hashes(run_dir)
    assert {k: v for k, v in after.items() if not k.startswith("eval/")} == before
    folders = sorted(p.name for p in (run_dir / "eval").iterdir())
    assert len(folders) == 2 and folders[1] == folders[0] + "-run2"
    results = json.loads((run_dir / "eval" / folders[0] / "results.json").read_text())
    assert results["command"] == command
    assert results["metrics"]["test/acc"] == pytest.approx(
        json.loads((run_dir / "diagnostics.jsonl").read_text().splitlines()[-1])["test/acc"]
    )
    assert f"[faeval] {command}: test/acc" in capsys.readouterr().out
    # In TensorBoard the evaluation sits at the training curve's last x (epochs trained).
    trained = json.loads((run_dir / "diagnostics.jsonl").read_text().splitlines()[-1])["epoch"]
    events = EventAccumulator(str(run_dir / "eval" / folders[0]))
    events.Reload()
    assert [e.step for e in events.Scalars("test/acc")] == [trained] and trained >= 1


def test_the_cards_command_fetches_cifar_when_absent(tmp_path, monkeypatch, fake_downloader):
    """`faeval fit --model DFA --data CIFAR10` on a machine with internet (the downloader is a
    fake that writes a format-faithful folder)."""
    monkeypatch.chdir(tmp_path)
    cli = run(["fit", "--model", "DFA", "--data", "CIFAR10", "--data.probe_size", "16",
               "--trainer.max_steps", "1", *QUIET])  # fmt: skip
    assert len(fake_downloader) == 1 and (tmp_path / "data" / "cifar-10-batches-py").is_dir()
    assert cli.trainer.global_step == 1
    assert Path(cli.trainer.log_dir) == tmp_path / "lightning_logs" / "CIFAR10" / "DFA" / "seed0"


DATA = {
    "FashionMNIST": ["--data.probe_size", "16"],
    "CIFAR10": ["--data.probe_size", "16"],
    "CIFAR100": ["--data.probe_size", "16"],
    "SyntheticLadder": ["--data.n_train", "64", "--data.n_test", "32", "--data.probe_size", "16"],
}


@pytest.mark.parametrize(
    ("backbone", "data"), itertools.product(known_names()["model.backbone"], DATA)
)
def test_every_backbone_on_every_data_set_trains_or_is_refused_naming_the_option(
    tmp_path, monkeypatch, fake_downloader, backbone, data
):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--model", "DFA", "--data", data, *DATA[data], "--model.backbone", backbone,
            "--trainer.max_steps", "1", "--trainer.limit_val_batches", "2", *QUIET]  # fmt: skip
    try:
        cli = run(args)
    except ValueError as err:  # refused while the classes are built, before any training
        mistake = user_error(err)
        assert isinstance(mistake, ConfigError), err
        assert "--model.backbone" in str(mistake) or "--data" in str(mistake), mistake
        assert not list(tmp_path.glob("lightning_logs/*/*/*/diagnostics.jsonl"))
        return
    assert cli.trainer.global_step == 1
    assert backbone not in ("ViTMini", "SmallCNN") or data != "SyntheticLadder"
