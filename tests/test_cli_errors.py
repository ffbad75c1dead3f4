"""A user's mistake gets one or two lines: the bad value, what is accepted, the way out.

Exit code 2, at most three lines on stderr, no traceback and no usage dump, for every kind of
mistake a newcomer makes; a bug in faeval still shows its traceback.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from faeval.cli import main
from faeval.runlog import RunLog
from tests.conftest import write_fake_cifar
from tests.helpers import TINY_RUN

LADDER = ["--data", "SyntheticLadder", "--data.n_train", "64", "--data.n_test", "32"]

#: What the user typed and what the message must say (a regular expression).
MISTAKES = [
    pytest.param(
        ["fit", "--model", "dfa"],
        r"--model dfa: no such class; did you mean DFA\?",
        id="method, wrong case",
    ),
    pytest.param(
        ["fit", "--model", "Nope", *LADDER],
        r"--model Nope.*takes one of: BP,",
        id="method, unknown",
    ),
    pytest.param(
        ["fit", "--model", "DFA", "--data", "CIFAR"],
        r"--data CIFAR.*did you mean CIFAR10",
        id="data, unknown",
    ),
    pytest.param(
        ["fit", "--model", "DFA", *LADDER, "--model.backbone", "ResMlp"],
        r"--model.backbone ResMlp.*did you mean ResMLP",
        id="backbone, unknown",
    ),
    pytest.param(
        ["fit", "--model", "DFA", *LADDER, "--model.backbone.d_hiden", "8"],
        r"--model.backbone.d_hiden is not an option of ResMLP; "
        r"did you mean --model.backbone.d_hidden\?",
        id="option of a backbone, typo",
    ),
    pytest.param(
        ["fit", "--model", "EP", *LADDER, "--model.stpes", "3"],
        r"--model.stpes is not an option of EP; did you mean --model.steps\?",
        id="option of a method, typo",
    ),
    pytest.param(
        ["fit", "--model", "DFA", *LADDER, "--floorstop", "true"],
        r"--floorstop is not an option; did you mean --floor_stop\?",
        id="option, unknown",
    ),
    pytest.param(
        ["fit", "--model", "DFA", "--data.batch_size", "3"],
        r"--data.batch_size was given without --data",
        id="option of a class not chosen",
    ),
    pytest.param(
        ["fit", "--model", "DFA", *LADDER, "--trainer.max_epochs", "abc"],
        r"--trainer.max_epochs abc: expected int",
        id="value of the wrong type",
    ),
    pytest.param(
        ["fit", "--model", "DFA", *LADDER, "--model.optimizer.lr", "x"],
        r"--model.optimizer.lr x: expected float",
        id="value of a nested option",
    ),
    pytest.param(
        ["fit", "--model", "EP", *LADDER, "--model.credit", "err"],
        r"--model.credit err: expected Literal\['error', 'displacement'\]",
        id="value out of a list",
    ),
    pytest.param(
        ["fit", "--model", "DFA", *LADDER, "--model.backbone.d_hidden", "0"],
        r"ResMLP needs d_hidden >= 1",
        id="value out of range",
    ),
    pytest.param(
        ["fit", "--model", "KP", *LADDER, "--model.decay", "0"],
        r"KP needs 0 < decay < 1 .*got decay=0.0; set --model.decay",
        id="second-round method, value out of range",
    ),
    pytest.param(
        ["fit", "--model", "PC", *LADDER, "--model.step_size", "0"],
        r"PC needs steps >= 0 and step_size > 0, got steps=20, step_size=0.0",
        id="relaxation step of zero",
    ),
    pytest.param(
        ["fit", "--model", "DFA", *LADDER, "--model.optimizer.lr", "-0.1"],
        r"optimizer refused its settings: Invalid learning rate: -0.1; set --model.optimizer.lr",
        id="negative learning rate",
    ),
    pytest.param(
        ["fit", "--model", "DFA", *LADDER, "--seeds", "0-1", "--model.optimizer.lr", "-0.1"],
        r"optimizer refused its settings: Invalid learning rate: -0.1; set --model.optimizer.lr",
        id="stack, negative learning rate",
    ),
    pytest.param(
        ["fit", "--model", "DFA", "--data", "tests.helpers.Blobs", "--data.labels", "float"],
        r"the labels of Blobs's validation batches are torch.float32 of shape \(40,\); .*"
        r"give y as a torch.long tensor of values in 0..2",
        id="data module with float labels",
    ),
    pytest.param(
        [
            "fit",
            "--model",
            "DFA",
            "--data",
            "tests.helpers.Blobs",
            "--data.labels",
            "shifted",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.log_every_n_steps",
            "1",
        ],
        r"the labels of the probe batch include 4, outside 0..2 \(num_classes=3\); set the "
        r"data module's num_classes",
        id="data module with labels >= num_classes",
    ),
    pytest.param(
        ["fit", "--model", "DFA", *LADDER, "--data.batch_size", "0"],
        r"batch_size must be a positive integer, got 0",
        id="batch size zero",
    ),
    pytest.param(
        ["fit", "--model", "DFA", "--data", "FashionMNIST", "--data.probe_size", "99999"],
        r"probe_size=99999 exceeds the 10000 test samples",
        id="probe larger than the test split",
    ),
    pytest.param(
        ["fit", "--model", "DFA", *LADDER, "--trainer.accelerator", "gpux"],
        r"--trainer: You selected an invalid accelerator name: `accelerator='gpux'`",
        id="trainer value",
    ),
    pytest.param(
        ["fit", "--model", "DFA"],
        r"--data is required\n  --data takes one of",
        id="missing data",
    ),
    pytest.param(
        ["fit", "--model", "DFA", "--data", "FashionMNIST", "--data.data_dir", "nowhere"],
        r"no Fashion-MNIST file .* under nowhere; install Debian's package",
        id="missing data folder",
    ),
    pytest.param(
        [
            "fit",
            "--model",
            "DFA",
            "--data",
            "CIFAR10",
            "--data.data_dir",
            "nowhere",
            "--data.download",
            "false",
        ],
        r"no CIFAR10 batches under nowhere/cifar-10-batches-py",
        id="missing CIFAR, no download",
    ),
    pytest.param(
        ["fit", "--model", "DFA", "--data", "CIFAR10", "--data.data_dir", "nowhere"],
        r"could not download CIFAR10 .* put cifar-10-batches-py under --data.data_dir",
        id="offline CIFAR",
    ),
    pytest.param(
        ["fit", "--config", "nope.yaml"],
        r"File does not exist: .*nope.yaml",
        id="missing config file",
    ),
    pytest.param(
        ["fitt"],
        r"unknown command 'fitt'; did you mean fit\?",
        id="unknown command",
    ),
    pytest.param(
        [],
        r"choose a command: fit, validate, test, audit",
        id="no command",
    ),
    pytest.param(
        ["audit", "nowhere"],
        r"no checkpoint or run directory at nowhere",
        id="audit of nothing",
    ),
    pytest.param(
        ["audit"],
        r"faeval audit needs a trained run: faeval audit RUN_FOLDER",
        id="audit without a run",
    ),
    pytest.param(
        ["test"],
        r"faeval test needs a trained run",
        id="test without a run",
    ),
    pytest.param(
        ["fit", "--model", "DFA", *LADDER, "--seeds", "0-1", "--trainer.accelerator", "gpux"],
        r"--trainer: You selected an invalid accelerator name: `accelerator='gpux'`",
        id="stack, trainer option",
    ),
    pytest.param(
        [
            "fit",
            "--model",
            "DFA",
            "--data",
            "FashionMNIST",
            "--data.data_dir",
            "nowhere",
            "--seeds",
            "0-1",
        ],
        r"no Fashion-MNIST file .* under nowhere; install Debian's package",
        id="stack, data missing",
    ),
    pytest.param(
        ["fit", "--model", "DFA", *LADDER, "--run_name", "{nope}"],
        r"--run_name '\{nope\}' cannot be filled",
        id="run name with an unknown field",
    ),
    pytest.param(
        ["fit", "--model", "DFA", *LADDER, "--model.optimizer", "Adamm"],
        r"--model.optimizer Adamm: no such class; did you mean Adam\?\n"
        r"  --model.optimizer takes one of: .*SGD",
        id="optimizer, typo",
    ),
    pytest.param(
        ["fit", "--model", "DFA", *LADDER, "--run_name", "."],
        r"--run_name '\.' gives '\.'; it must name a folder below lightning_logs",
        id="run name of the log root",
    ),
    pytest.param(
        ["fit", "--model", "DFA", *LADDER, "--run_name", "{seed.__class__}"],
        r"--run_name '\{seed.__class__\}': \{seed.__class__\} is not a field; use \{data\}, ",
        id="run name reaching into a field",
    ),
    pytest.param(
        ["fit", "--model", "DFA", *LADDER, "--ckpt_path", "nope.ckpt"],
        r"--ckpt_path nope.ckpt names no file; give a run's RUN/checkpoints/last.ckpt",
        id="checkpoint to resume, missing",
    ),
    pytest.param(
        ["fit", "--model", "DFA", *LADDER, "--seeds", "0-1", "--ckpt_path", "nope.ckpt"],
        r"--ckpt_path nope.ckpt names no file",
        id="stack, checkpoint to resume, missing",
    ),
    pytest.param(
        ["validate", "--model", "DFA", *LADDER, "--ckpt_path", "nope.ckpt"],
        r"--ckpt_path nope.ckpt names no file; .*or the run's folder: faeval validate RUN_FOLDER",
        id="checkpoint to evaluate, missing",
    ),
    pytest.param(
        ["fit", "--model", "DFA", *LADDER, "--ckpt_path", "."],
        r"--ckpt_path \. is a folder, not a checkpoint; give a run's RUN/checkpoints/last.ckpt",
        id="checkpoint to resume, a folder",
    ),
    pytest.param(
        ["fit", "--model", "DFA", *LADDER, "--seed_everything", "-1"],
        r"--seed_everything -1: a seed is an integer from 0 to 4294967295",
        id="seed, negative",
    ),
    pytest.param(
        ["fit", "--model", "DFA", *LADDER, "--seed_everything", str(2**33)],
        r"--seed_everything 8589934592: a seed is an integer from 0 to 4294967295",
        id="seed, over 2**32",
    ),
    pytest.param(
        ["fit", "--model", "DFA", *LADDER, "--seeds", f"0,{2**33}"],
        r"--seeds '0,8589934592': a seed is an integer from 0 to 4294967295",
        id="stack, seed over 2**32",
    ),
    pytest.param(
        ["fit", "--model", "DFA", *LADDER, "--checkpoint_every_n_steps", "-1"],
        r"--checkpoint_every_n_steps -1: give a number of training steps, or 0",
        id="checkpoint interval, negative",
    ),
    pytest.param(
        ["fit", "--model", "DFA", *LADDER, "--seeds", "5-3,1"],
        r"--seeds '5-3,1': 5-3 names no seed; write 3-5",
        id="stack, range backwards",
    ),
]


@pytest.mark.parametrize("args, expected", MISTAKES)
def test_each_mistake_is_one_or_two_lines_with_exit_code_2(
    args, expected, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert_one_mistake(args, expected, tmp_path, capsys)


def assert_one_mistake(args: list[str], expected: str, tmp_path: Path, capsys) -> None:
    """``faeval ARGS`` exits with code 2 and at most three lines matching ``expected``."""
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_.value.code == 2, err
    assert 1 <= len(lines) <= 3, err
    assert lines[0].startswith("faeval: error: "), err
    assert "Traceback" not in err and "usage:" not in err
    assert re.search(expected, err, re.DOTALL), err
    if args[:1] == ["fit"]:  # a run that failed before its first row leaves no folder behind
        assert not list(Path(tmp_path).glob("lightning_logs/*/*/*"))  # a stack's folders too


#: A user's package ``userpkg`` (the ``userpkg`` fixture writes it): a module that fails to
#: import, one whose class is neither a method nor a data module, a method that raises.
USER_MODULES = {
    "broken.py": "import no_such_dependency\n",
    "plain.py": "class Plain:\n    pass\n",
    "raising.py": (
        "from faeval.methods import DFA\n"
        "\n"
        "\n"
        "class Raising(DFA):\n"
        "    def __init__(self, *args, **kwargs):\n"
        "        super().__init__(*args, **kwargs)\n"
        "        raise ValueError('alpha must be set')\n"
    ),
}
#: A user's --config files, each with one mistake.
USER_CONFIGS = {
    "penalti.yaml": "model:\n  class_path: DFA\n  init_args:\n    penalti: 1.0\n",
    "flat.yaml": "model:\n  class_path: DFA\n  penalti: 1.0\n",
    "backbone.yaml": (
        "model:\n  class_path: DFA\n  init_args:\n    backbone:\n      class_path: ResMLP\n"
        "      init_args:\n        d_hiden: 8\n"
    ),
    "trainer.yaml": "trainer:\n  max_epoch: 1\n",
    "not_yaml.yaml": "model:\n  class_path: DFA\n   bad: [\n",
    "not_mapping.yaml": "just a sentence\n",
}


@pytest.fixture(scope="module")
def userpkg(tmp_path_factory):
    """``userpkg`` (``USER_MODULES``) importable for the rest of the session."""
    root = tmp_path_factory.mktemp("lib")
    (root / "userpkg").mkdir()
    (root / "userpkg" / "__init__.py").write_text("")
    for name, code in USER_MODULES.items():
        (root / "userpkg" / name).write_text(code)
    # Once imported, userpkg.raising.Raising is a CreditMethod subclass that jsonargparse lists
    # in every later parser, which would fail to import it from a path that was gone.
    sys.path.insert(0, str(root))
    return root


@pytest.fixture
def user_files(userpkg, tmp_path, monkeypatch):
    """``userpkg`` importable and the --config files in the working folder (``tmp_path``)."""
    monkeypatch.chdir(tmp_path)
    for name, text in USER_CONFIGS.items():
        (tmp_path / name).write_text(text)


#: A user's mistakes in their own code or files: the message is about what is wrong there.
USER_MISTAKES = [
    pytest.param(
        ["fit", "--model", "userpkg.broken.Method", *LADDER],
        r"--model userpkg.broken.Method: importing userpkg.broken failed: ModuleNotFoundError: "
        r"No module named 'no_such_dependency'\n  at \S*userpkg/broken.py:1\n",
        id="method's module fails to import",
    ),
    pytest.param(
        ["fit", "--model", "DFA", "--data", "userpkg.broken.Data"],
        r"--data userpkg.broken.Data: importing userpkg.broken failed: ModuleNotFoundError",
        id="data module's module fails to import",
    ),
    pytest.param(
        ["fit", "--model", "DFA", *LADDER, "--model.backbone", "userpkg.broken.Net"],
        r"--model.backbone userpkg.broken.Net: importing userpkg.broken failed",
        id="network's module fails to import",
    ),
    pytest.param(
        ["fit", "--model", "nopkg_at_all.Method", *LADDER],
        r"--model nopkg_at_all.Method: no module named nopkg_at_all; check the class path",
        id="class path, no such module",
    ),
    pytest.param(
        ["fit", "--model", "userpkg.plain.Plian", *LADDER],
        r"--model userpkg.plain.Plian: userpkg.plain has no Plian; did you mean Plain\?",
        id="class path, no such class",
    ),
    pytest.param(
        ["fit", "--model", "userpkg.plain.Plain", *LADDER],
        r"--model userpkg.plain.Plain is not a CreditMethod; a method subclasses "
        r"faeval.methods.CreditMethod",
        id="class path, not a method",
    ),
    pytest.param(
        ["fit", "--model", "DFA", "--data", "userpkg.plain.Plain"],
        r"--data userpkg.plain.Plain is not a LightningDataModule",
        id="class path, not a data module",
    ),
    pytest.param(
        ["fit", "--model", "userpkg.raising.Raising", *LADDER],
        r"userpkg.raising.Raising raised ValueError: alpha must be set\n"
        r"  at \S*userpkg/raising.py:7, in __init__\n",
        id="method raising in __init__",
    ),
    pytest.param(
        ["fit", "--config", "penalti.yaml", *LADDER],
        r"--model.penalti \(in penalti.yaml\) is not an option of DFA; "
        r"did you mean --model.penalty\?",
        id="config key, method's",
    ),
    pytest.param(
        ["fit", "--config", "flat.yaml", *LADDER],
        r"--model.penalti \(in flat.yaml\) is not an option of DFA",
        id="config key, method's, without init_args",
    ),
    pytest.param(
        ["fit", "--config", "backbone.yaml", *LADDER],
        r"--model.backbone.d_hiden \(in backbone.yaml\) is not an option of ResMLP; "
        r"did you mean --model.backbone.d_hidden\?",
        id="config key, network's",
    ),
    pytest.param(
        ["fit", "--model", "DFA", *LADDER, "--config", "trainer.yaml"],
        r"--trainer.max_epoch \(in trainer.yaml\) is not an option; "
        r"did you mean --trainer.max_epochs\?",
        id="config key, trainer's",
    ),
    pytest.param(
        ["fit", "--config", "not_yaml.yaml"],
        r"--config not_yaml.yaml is not valid YAML: .* \(line 3, column 7\)",
        id="config, not YAML",
    ),
    pytest.param(
        ["fit", "--config", "not_mapping.yaml"],
        r"--config not_mapping.yaml is not a mapping of options",
        id="config, not a mapping",
    ),
]


@pytest.mark.parametrize("args, expected", USER_MISTAKES)
def test_a_mistake_in_the_users_code_or_files_says_what_is_wrong_there(
    args, expected, user_files, tmp_path, capsys
):
    assert_one_mistake(args, expected, tmp_path, capsys)


def test_unreadable_checkpoint_is_one_line(tmp_path, capsys):
    bad = tmp_path / "x.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as exit_:
        main(["audit", str(bad)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert f"{bad} is not a torch checkpoint" in err


@pytest.mark.parametrize("seeds", [[], ["--seeds", "0-1"]], ids=["lone", "stack"])
def test_resuming_from_an_unreadable_checkpoint_is_one_line(tmp_path, monkeypatch, capsys, seeds):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--model", "DFA", *LADDER, *seeds, "--ckpt_path", "x.ckpt"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "x.ckpt is not a torch checkpoint" in err


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """Only a user's mistake is shortened: a bug in faeval must show where it is."""

    def broken(self, trace, y):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("faeval.methods.dfa.DFA.credits", broken)
    with pytest.raises(ZeroDivisionError, match="a bug"):
        main(["fit", "--model", "DFA", *TINY_RUN, "--trainer.max_epochs", "1",
              "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip


def test_a_truncated_data_file_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = write_fake_cifar(tmp_path / "data")
    damaged = folder / "data_batch_2"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--model", "DFA", "--data", "CIFAR10", "--data.data_dir", "data"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"faeval: error: {Path('data/cifar-10-batches-py/data_batch_2')} is ")
    assert "truncated or damaged" in err and "Traceback" not in err


def test_a_bug_in_a_faeval_class_built_keeps_its_traceback(tmp_path, monkeypatch):
    """Only the user's own classes raising are shortened; faeval's own keep the traceback."""

    def broken(self, *args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("faeval.methods.dfa.DFA.__init__", broken)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception) as raised:  # jsonargparse wraps it: a ValueError
        main(["fit", "--model", "DFA", *LADDER])
    cause = raised.value.__cause__ or raised.value.__context__
    assert isinstance(cause, ZeroDivisionError), raised.value


def test_a_resumed_run_keeps_its_seed(tmp_path, monkeypatch, capsys):
    """Another --seed_everything is refused as other contradicting options are; none given
    takes the run's (it was the default 0, without a word)."""
    monkeypatch.chdir(tmp_path)
    fit = ["fit", "--model", "DFA", *TINY_RUN]
    main([*fit, "--trainer.max_epochs", "1", "--seed_everything", "5"])
    run = tmp_path / "lightning_logs" / "SyntheticLadder" / "DFA" / "seed5"
    resume = [*fit, "--trainer.max_epochs", "2", "--ckpt_path", str(run / "checkpoints/last.ckpt")]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main([*resume, "--seed_everything", "3"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(r"--seed_everything 3: --ckpt_path \S+ continues a run of seed 5", err), err
    main(resume)
    assert "seed_everything: 5" in (run / "config.resumed.yaml").read_text()
    assert [row["seed"] for row in RunLog(run).rows()] == [5, 5, 5]  # epochs 0 (init), 1, 2


@pytest.mark.parametrize("seeds", [[], ["--seeds", "0-1"]], ids=["lone", "stack"])
def test_a_learning_rate_of_zero_is_warned_about_once(tmp_path, monkeypatch, caplog, seeds):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--model", "DFA", *TINY_RUN, *seeds, "--trainer.max_epochs", "1",
          "--model.optimizer.lr", "0"])  # fmt: skip
    said = [line for line in caplog.messages if "learning rate" in line]
    assert said == [  # once, from the optimizer's build (faeval.methods.base: also in Python)
        "the optimizer's learning rate is 0: the network will not train; set "
        "--model.optimizer.lr, e.g. 1e-3"
    ]
