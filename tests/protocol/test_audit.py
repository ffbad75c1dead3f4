"""``faeval audit`` on saved runs: it reproduces the logged diagnostics, refuses bad files, and
gives what ``audit_model`` gives from Python on a run trained from Python."""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from faeval.backbones import ResMLP
from faeval.callbacks import Diagnostics
from faeval.cli import run
from faeval.data import SyntheticLadder
from faeval.methods import DFA
from faeval.protocol import ProtocolSettings, audit_model
from faeval.protocol.audit import frozen_accuracy
from faeval.runlog import RunLog
from tests.helpers import Blobs
from tests.protocol.cli_args import AUDIT, CHEAP, TINY, protocol_args


def fit(root: Path, model: str) -> Path:
    cli = run(
        ["fit", "--model", model, *TINY, *protocol_args(), "--trainer.default_root_dir", str(root)]
    )
    return Path(cli.trainer.log_dir)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def audit_record(run_dir: Path) -> dict:
    return json.loads(next((run_dir / "checkpoints").glob("*.audit.json")).read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A DFA run with checkpoint and logs, and the logs a FrozenBlocks run leaves for (d)."""
    root = tmp_path_factory.mktemp("runs")
    frozen = root / "frozen"
    frozen.mkdir()
    rows = [{"epoch": 0, "test/acc": None}, {"epoch": 2, "test/acc": 0.25}]
    (frozen / "diagnostics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"DFA": fit(root / "dfa", "DFA"), "FrozenBlocks": frozen}


def test_audit_reproduces_the_last_logged_epoch(runs, capsys):
    dfa = runs["DFA"]
    run(["audit", str(dfa), "--frozen", str(runs["FrozenBlocks"]), *AUDIT])
    rec = audit_record(dfa)
    logged = jsonl(dfa / "diagnostics.jsonl")[-1]
    got = rec["diagnostics"]
    assert got["epoch"] == logged["epoch"] == 2 and got["step"] == logged["step"]
    assert got["test/acc"] == pytest.approx(logged["test/acc"], abs=1e-9)
    for key in ("h_norm", "g_norm", "cos"):
        assert got[key] == pytest.approx(logged[key], rel=1e-5, abs=1e-7), key
    assert got["growth"] == pytest.approx(logged["growth"], rel=1e-5)
    # The heavier pieces match what the Protocol callback logged at the same epoch.
    proto = jsonl(dfa / "protocol.jsonl")[-1]
    assert proto["epoch"] == 2
    assert rec["protocol"]["null"]["deep_mean"] == pytest.approx(
        proto["null"]["deep_mean"], abs=1e-6
    )
    assert rec["protocol"]["rho"]["rho"] == pytest.approx(proto["rho"]["rho"], abs=1e-6)
    # (d) against the frozen run's own last accuracy.
    d = rec["verdict"]["verdicts"]["d"]
    assert d["figure"] == pytest.approx(logged["test/acc"] - 0.25)
    assert d["status"] == ("PASS" if logged["test/acc"] - 0.25 >= 0.02 else "FIRES")
    out = capsys.readouterr().out
    assert "[faeval] verdict: DFA" in out and "standard pair" in out and "fires when" in out
    assert (dfa / "checkpoints" / (Path(rec["checkpoint"]).stem + ".audit.md")).is_file()


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for f in dst.glob("checkpoints/*.audit.*"):
        f.unlink()
    return next((dst / "checkpoints").glob("*.ckpt"))


def test_audit_refuses_a_checkpoint_without_its_feedback(runs, tmp_path):
    ckpt = copy_run(runs["DFA"], tmp_path / "run")
    state = torch.load(ckpt, weights_only=True)
    del state["state_dict"]["feedback.B1"]
    torch.save(state, ckpt)
    with pytest.raises(RuntimeError, match=r"lacks its credit source \(feedback.B1\)"):
        run(["audit", str(ckpt), *AUDIT])
    assert not list(ckpt.parent.glob("*.audit.json"))  # no verdict, not Γ = 1.0


def test_audit_refuses_corrupt_foreign_and_unsafe_files(runs, tmp_path):
    ckpt = copy_run(runs["DFA"], tmp_path / "run")
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"not a torch checkpoint|not a readable checkpoint"):
        run(["audit", str(ckpt)])
    torch.save({"weights": torch.zeros(2)}, ckpt)
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        run(["audit", str(ckpt)])
    state = torch.load(runs["DFA"] / "checkpoints" / ckpt.name, weights_only=True)
    state["hyper_parameters"]["payload"] = Path("/")  # a pickled object, not plain data
    torch.save(state, ckpt)
    with pytest.raises(ValueError, match="weights-only loading refuses"):
        run(["audit", str(ckpt)])
    with pytest.raises(FileNotFoundError, match="no checkpoint or run directory"):
        run(["audit", str(tmp_path / "nowhere")])


def test_audit_model_from_python_gives_what_faeval_audit_gives_on_the_same_run(runs, tmp_path):
    """A run trained from Python, its folder without config.yaml: audited in Python and by the
    command."""
    seed_everything(3)
    data = SyntheticLadder(input_dim=8, num_classes=3, n_train=128, n_test=64, batch_size=32,
                           probe_size=64)  # fmt: skip
    method = DFA(data.input_shape, data.num_classes,
                 backbone=partial(ResMLP, d_hidden=8, num_blocks=2))  # fmt: skip
    trainer = Trainer(max_epochs=2, default_root_dir=str(tmp_path), enable_progress_bar=False,
                      enable_model_summary=False, log_every_n_steps=1,
                      callbacks=[Diagnostics(verbose=False)])  # fmt: skip
    trainer.fit(method, datamodule=data)
    run_dir = Path(trainer.log_dir)
    # Diagnostics records the run's config as faeval fit would; without it (a run from an
    # older faeval, a network given built) the audit rebuilds the run from its checkpoint.
    (run_dir / "config.yaml").unlink()

    frozen_acc, _ = frozen_accuracy(runs["FrozenBlocks"])
    settings = ProtocolSettings(**CHEAP)
    record = audit_model(method, data, RunLog(run_dir).rows(), frozen_acc=frozen_acc,
                         settings=settings)  # fmt: skip
    ours = json.loads(json.dumps(record.as_dict()))  # as written, for a like-for-like compare
    run(["audit", str(run_dir), "--frozen", str(runs["FrozenBlocks"]), *AUDIT])
    theirs = audit_record(run_dir)

    assert ours["diagnostics"]["epoch"] == theirs["diagnostics"]["epoch"] == 2
    assert ours["diagnostics"]["seed"] == theirs["diagnostics"]["seed"] == 3
    for key in ("h_norm", "g_norm", "cos", "test/acc", "growth", "probe_loss"):
        assert ours["diagnostics"][key] == pytest.approx(theirs["diagnostics"][key], rel=1e-6,
                                                         abs=1e-9), key  # fmt: skip
    for piece in ("null", "rho", "stability"):
        assert ours["protocol"][piece] == pytest.approx(theirs["protocol"][piece], rel=1e-6,
                                                        abs=1e-9), piece  # fmt: skip
    for key, verdict in ours["verdict"]["verdicts"].items():
        other = theirs["verdict"]["verdicts"][key]
        assert verdict["status"] == other["status"], key
        assert verdict["figure"] == pytest.approx(other["figure"], rel=1e-6, abs=1e-9), key
    assert ours["verdict"]["verdicts"]["d"]["status"] in ("PASS", "FIRES")  # measured: (d) too


def test_audit_of_a_python_run_whose_data_is_not_recorded_asks_for_it(tmp_path):
    data = Blobs()
    method = DFA((6,), 3, backbone=partial(ResMLP, d_hidden=8, num_blocks=2))
    trainer = Trainer(max_epochs=1, default_root_dir=str(tmp_path), enable_progress_bar=False,
                      enable_model_summary=False, log_every_n_steps=1,
                      callbacks=[Diagnostics(verbose=False)])  # fmt: skip
    trainer.fit(method, datamodule=data)
    with pytest.raises(FileNotFoundError, match=r"does not record its data module.*--data"):
        run(["audit", trainer.log_dir])
    run(["audit", trainer.log_dir, "--data", "tests.helpers.Blobs", *AUDIT])
    assert audit_record(Path(trainer.log_dir))["verdict"]["method"] == "DFA"
