"""A researcher's own method, network and data, exactly as the README writes them: the
``mypkg`` modules of its code blocks are written into a temporary folder (on ``sys.path``
and, for subprocesses, on ``PYTHONPATH``) and driven through ``faeval fit``, ``faeval
audit``, a sweep and from Python; the README's Python snippets run as they are."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from faeval.cli import run
from faeval.data import SyntheticLadder
from faeval.protocol import ProtocolSettings, audit_model
from faeval.runlog import RunLog
from tests.helpers import QUIET, TINY_RUN
from tests.protocol.cli_args import AUDIT, CHEAP, protocol_args
from tests.study.sweeps import report, sweep

README = Path(__file__).resolve().parents[1] / "README.md"
MEASURED = {"PASS", "FIRES"}
#: TINY_RUN's data, without its ResMLP options (for a backbone of the user's).
TINY_DATA = ["--data", "SyntheticLadder", "--data.input_dim", "8", "--data.num_classes", "3",
             "--data.n_train", "128", "--data.n_test", "64", "--data.batch_size", "32",
             "--data.probe_size", "64"]  # fmt: skip


def python_blocks(heading: str) -> list[str]:
    """The ```python blocks of the README section under ``heading``, in order."""
    lines = README.read_text().splitlines()
    level = heading.split()[0]
    blocks: list[str] = []
    block: list[str] | None = None
    for line in lines[lines.index(heading) + 1 :]:
        if block is not None:
            if line.startswith("```"):
                blocks.append("\n".join(block) + "\n")
                block = None
            else:
                block.append(line)
        elif line.startswith("```python"):
            block = []
        elif line.startswith("#") and len(line.split()[0]) <= len(level):
            break  # the next section
    return blocks


def module_blocks() -> dict[str, str]:
    """The README's ``mypkg`` files: the blocks whose first line names one."""
    sections = ("### Your own method", "### Your own network", "### Your own data")
    found = {}
    for heading in sections:
        for block in python_blocks(heading):
            first = block.splitlines()[0]
            if first.startswith("# mypkg/"):
                found[first.removeprefix("# ")] = block
    return found


def usage_block(heading: str) -> str:
    """The README section's Python snippet that uses the package (not a ``mypkg`` file)."""
    (block,) = [b for b in python_blocks(heading) if not b.startswith("# mypkg/")]
    return block


@pytest.fixture(scope="module")
def mypkg(tmp_path_factory):
    """The README's package, importable here and in subprocesses."""
    root = tmp_path_factory.mktemp("project")
    files = module_blocks()
    assert set(files) == {"mypkg/shared_dfa.py", "mypkg/network.py", "mypkg/data.py"}
    (root / "mypkg").mkdir()
    (root / "mypkg" / "__init__.py").write_text("")
    for name, code in files.items():
        (root / name).write_text(code)
    # mypkg stays importable for the rest of the session: once imported, its classes are
    # CreditMethod subclasses that jsonargparse lists (and caches) in every later parser, which
    # would fail to import them from a path that was gone.
    sys.path.insert(0, str(root))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
        yield root


def run_snippet(code: str, cwd: Path, monkeypatch) -> dict:
    """Runs a README snippet in ``cwd`` and returns its globals."""
    monkeypatch.chdir(cwd)
    scope: dict = {"__name__": "readme"}
    exec(compile(code, str(README), "exec"), scope)
    return scope


def verdicts(run_dir: Path) -> dict[str, str]:
    record = json.loads(next((run_dir / "checkpoints").glob("*.audit.json")).read_text())
    return {k: v["status"] for k, v in record["verdict"]["verdicts"].items()}


@pytest.mark.slow
def test_your_method_runs_through_a_sweep_fit_and_audit_by_class_path(mypkg, tmp_path):
    method = "mypkg.shared_dfa.SharedDFA"
    one_epoch = [*TINY_RUN, "--trainer.max_epochs", "1"]
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"seeds": [0], "methods": [method], "args": one_epoch,
                                "protocol": {"every_n_epochs": 1, "settings": CHEAP}}))  # fmt: skip
    assert sweep.main([str(spec), "--out", str(tmp_path / "sweep"), "--jobs", "2"]) == 0
    assert report.main([str(tmp_path / "sweep")]) == 0
    table = json.loads((tmp_path / "sweep" / "report.json").read_text())["settings"]["default"]
    mine = table["methods"][method]["verdicts"]
    assert {k: v["status"] in MEASURED for k, v in mine.items()} == dict.fromkeys(mine, True)
    assert f"| {method} |" in (tmp_path / "sweep" / "report.md").read_text()

    cli = run(["fit", "--model", method, *one_epoch, *protocol_args(),
               "--trainer.default_root_dir", str(tmp_path / "fit")])  # fmt: skip
    run_dir = Path(cli.trainer.log_dir)
    rows = RunLog(run_dir).rows()
    assert [r["epoch"] for r in rows] == [0, 1] and {r["method"] for r in rows} == {"SharedDFA"}
    assert all(c is not None for c in rows[-1]["cos"])
    assert RunLog(run_dir).last_protocol()["null"]["draws"] == CHEAP["null_draws"]  # a null band
    # Every diagnostic and verdict, (d) against the sweep's FrozenBlocks run of the same seed.
    frozen = tmp_path / "sweep" / "runs" / "default" / "FrozenBlocks" / "seed0"
    run(["audit", str(run_dir), "--frozen", str(frozen), *AUDIT])
    found = verdicts(run_dir)
    assert list(found) == ["a", "b", "c", "d", "mode2", "bp"] and set(found.values()) <= MEASURED
    assert found["bp"] == "PASS"  # its credit is not backprop's


def test_your_method_from_python(mypkg, quiet_trainer):
    from mypkg.shared_dfa import SharedDFA

    data = SyntheticLadder(input_dim=8, num_classes=3, n_train=128, n_test=64, probe_size=64)
    method = SharedDFA(data.input_shape, data.num_classes)
    quiet_trainer(max_epochs=1).fit(method, datamodule=data)
    record = audit_model(method, data, frozen_acc=0.4, settings=ProtocolSettings(**CHEAP))
    assert {v.status for v in record.verdict.verdicts.values()} <= MEASURED
    assert record.protocol["null"] is not None  # draw_feedback: the null band applies


def test_your_network_from_python_and_the_command_line(mypkg, tmp_path, monkeypatch):
    scope = run_snippet(usage_block("### Your own network"), tmp_path, monkeypatch)
    net, method = scope["net"], scope["method"]
    assert method.backbone.blocks[0] is net.branches[0] and method.backbone.num_classes == 10
    rows = RunLog(Path(scope["trainer"].log_dir)).rows()
    assert [r["epoch"] for r in rows] == [0, 1] and len(rows[-1]["cos"]) == 5
    torch.testing.assert_close(method(torch.zeros(2, 1, 28, 28)), net(torch.zeros(2, 1, 28, 28)))

    backbone = ["--model.backbone", "mypkg.network.TinyResNetBackbone",
                "--model.backbone.width", "8", "--model.backbone.depth", "3"]  # fmt: skip
    cli = run(["fit", "--model", "FA", *TINY_DATA, *QUIET, "--trainer.max_epochs", "2",
               *backbone, *protocol_args(),
               "--trainer.default_root_dir", str(tmp_path / "cli")])  # fmt: skip
    assert type(cli.model.backbone).__name__ == "TinyResNetBackbone"
    assert len(RunLog(Path(cli.trainer.log_dir)).rows()[-1]["h_norm"]) == 4
    run(["audit", cli.trainer.log_dir, *AUDIT])  # rebuilt from config.yaml, by class path
    assert set(verdicts(Path(cli.trainer.log_dir)).values()) <= MEASURED | {"UNMEASURABLE"}


def test_your_data_from_python_and_the_command_line(mypkg, tmp_path, monkeypatch, capsys):
    scope = run_snippet(usage_block("### Your own data"), tmp_path, monkeypatch)
    assert scope["method"].backbone.input_shape == (20,)
    assert scope["method"].backbone.num_classes == 4
    rows = RunLog(Path(scope["trainer"].log_dir)).rows()
    assert [r["epoch"] for r in rows] == [0, 1, 2] and rows[-1]["test/acc"] > 0.25

    data = ["--data", "mypkg.data.Blobs", "--data.n", "256", "--data.dim", "6",
            "--data.num_classes", "3", "--data.batch_size", "32"]  # fmt: skip
    small = ["--model.backbone.d_hidden", "8", "--model.backbone.num_blocks", "2"]
    cli = run(["fit", "--model", "DFA", *data, *small, *QUIET, *protocol_args(),
               "--trainer.max_epochs", "1",
               "--trainer.default_root_dir", str(tmp_path / "cli")])  # fmt: skip
    assert cli.model.backbone.input_shape == (6,) and cli.model.backbone.num_classes == 3
    run(["audit", cli.trainer.log_dir, *AUDIT])  # the data rebuilt from config.yaml
    assert verdicts(Path(cli.trainer.log_dir))["mode2"] in MEASURED | {"UNMEASURABLE"}


def test_the_readmes_use_from_python_snippet_runs_and_audits(tmp_path, monkeypatch):
    scope = run_snippet(usage_block("## Use from Python"), tmp_path, monkeypatch)
    found = scope["verdicts"]
    assert list(found) == ["a", "b", "c", "d", "mode2", "bp"]
    assert found["d"] in MEASURED and found["mode2"] in MEASURED  # (d) against the baseline
    record = scope["record"]
    assert record.diagnostics["epoch"] == 1 and record.diagnostics["seed"] == 0
