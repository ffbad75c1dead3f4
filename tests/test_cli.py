"""The command line in-process: short names, options, saved config, resume, floor stop."""

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import yaml

from faeval.backbones import ResMLP
from faeval.callbacks import FloorStopping
from faeval.cli import known_names, main, run
from faeval.runlog import DEPTH_BASELINE
from tests.helpers import QUIET, TINY_RUN

TINY = TINY_RUN
METHODS = known_names()["model"]
CONFIGS = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))


def fit(tmp_path: Path, *args: str, model: str = "DFA", epochs: int = 1):
    return run(
        [
            "fit",
            "--model",
            model,
            *TINY,
            "--trainer.max_epochs",
            str(epochs),
            "--trainer.default_root_dir",
            str(tmp_path),
            *args,
        ]
    )


def rows(cli) -> list[dict]:
    path = Path(cli.trainer.log_dir) / "diagnostics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_command_line_knows_every_method_of_the_package():
    assert {"BP", "FA", "DFA", "FrozenBlocks", "EP", "StateBridge", "CreditBridge"} <= set(METHODS)
    assert {"LayerFA", "USF", "BRSF", "FRSF", "KP", "DRTP", "PC"} <= set(METHODS)


@pytest.mark.parametrize("model", METHODS)
def test_each_method_runs_by_short_name_and_writes_rows(tmp_path, model):
    cli = fit(tmp_path, model=model, epochs=2)
    assert type(cli.model).__name__ == model
    got = rows(cli)
    assert [r["epoch"] for r in got] == [0, 1, 2]
    assert all(len(r["h_norm"]) == len(r["g_norm"]) == len(r["cos"]) == 3 for r in got)
    assert got[-1]["test/acc"] is not None and got[0]["test/acc"] is None
    assert got[-1]["train/loss"] == pytest.approx(float(cli.trainer.callback_metrics["train/loss"]))
    assert {r["method"] for r in got} == {model} and {r["seed"] for r in got} == {0}
    assert {r["role"] for r in got} == {cli.model.role}
    assert (cli.model.role == DEPTH_BASELINE) == (model == "FrozenBlocks")
    if model in ("BP", "FrozenBlocks"):
        assert all(abs(c - 1) < 1e-5 for c in got[-1]["cos"])
    config = yaml.safe_load((Path(cli.trainer.log_dir) / "config.yaml").read_text())
    assert config["model"]["class_path"].endswith(model)


@pytest.mark.parametrize("model", METHODS)
def test_each_method_offers_the_base_arguments_it_forwards(model, capsys):
    with pytest.raises(SystemExit):
        run(["fit", "--model.help", model])
    out = capsys.readouterr().out
    for option in ("--model.backbone", "--model.optimizer", "--model.penalty"):
        assert option in out, option


def test_options_reach_the_backbone_data_method_and_optimizer(tmp_path):
    cli = run(
        [
            "fit",
            "--model",
            "DFA",
            *TINY,
            "--trainer.max_epochs",
            "1",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--model.backbone.d_hidden",
            "12",
            "--model.backbone.num_blocks",
            "3",
            "--model.backbone.residual_add",
            "false",
            "--model.backbone.w2_std",
            "0.5",
            "--model.backbone.terminal_ln",
            "false",
            "--model.penalty",
            "0.01",
            "--data.random_targets",
            "true",
            "--data.batch_size",
            "16",
            "--seed_everything",
            "5",
            "--model.optimizer",
            "SGD",
            "--model.optimizer.lr",
            "0.05",
        ]
    )
    bb = cli.model.backbone
    assert bb.num_blocks == 3 and bb.blocks[0].w1.out_features == 12
    assert not bb.residual_add and isinstance(bb.out_ln, torch.nn.Identity)
    assert 0.3 < bb.blocks[0].w2.weight.std().item() < 0.7 or cli.trainer.global_step > 0
    assert cli.model.penalty == 0.01 and cli.datamodule.random_targets
    assert cli.datamodule.batch_size == 16 and cli.trainer.global_step == 8  # 128 / 16
    opt = cli.model.optimizers().optimizer
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == 0.05
    saved = yaml.safe_load((Path(cli.trainer.log_dir) / "config.yaml").read_text())
    assert saved["seed_everything"] == 5 and saved["model"]["init_args"]["penalty"] == 0.01


def test_adam_is_fused_by_default(tmp_path):
    cli = fit(tmp_path)
    opt = cli.model.optimizers().optimizer
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["fused"] is True


def test_same_seed_same_run_and_feedback_is_drawn_from_the_seed(tmp_path):
    a = fit(tmp_path / "a", "--seed_everything", "3")
    b = fit(tmp_path / "b", "--seed_everything", "3")
    c = fit(tmp_path / "c", "--seed_everything", "4")
    sa, sb, sc = (m.model.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["feedback.B1"], sc["feedback.B1"])


def _last_ckpt(cli) -> Path:
    return next((Path(cli.trainer.log_dir) / "checkpoints").glob("*.ckpt"))


# Resuming continues in the run's own folder, so ModelCheckpoint finds it non-empty: intended.
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
@pytest.mark.parametrize("model", ["DFA", "FA"])
def test_resume_is_bit_exact_and_feedback_never_changes(tmp_path, model):
    straight = fit(tmp_path / "straight", "--data.random_targets", "true", model=model, epochs=4)
    half = fit(tmp_path / "half", "--data.random_targets", "true", model=model, epochs=2)
    half_ckpt = torch.load(_last_ckpt(half), weights_only=False)
    resumed = fit(
        tmp_path / "half",
        "--data.random_targets",
        "true",
        "--ckpt_path",
        str(_last_ckpt(half)),
        model=model,
        epochs=4,
    )
    assert resumed.trainer.current_epoch == 4
    assert resumed.trainer.log_dir == half.trainer.log_dir  # the same run continues
    assert [r["epoch"] for r in rows(resumed)] == [0, 1, 2, 3, 4]
    assert (Path(half.trainer.log_dir) / "config.yaml").is_file()  # original config kept
    final_a = torch.load(_last_ckpt(straight), weights_only=False)["state_dict"]
    final_b = resumed.model.state_dict()
    assert final_a.keys() == final_b.keys()
    for key in final_a:
        assert torch.equal(final_a[key], final_b[key]), key
    fresh = straight.model.draw_feedback(0)  # the draw made at construction (run seed 0)
    for name, buf in fresh.named_buffers():
        key = f"feedback.{name}"
        assert torch.equal(final_a[key], buf) and torch.equal(half_ckpt["state_dict"][key], buf)


def test_missing_feedback_in_a_checkpoint_is_an_error(tmp_path):
    cli = fit(tmp_path)
    state = cli.model.state_dict()
    del state["feedback.B2"]
    model = type(cli.model)((8,), 3, backbone=partial(ResMLP, d_hidden=8, num_blocks=2))
    with pytest.raises(RuntimeError, match=r"Missing key.*feedback\.B2"):
        model.load_state_dict(state)
    del model.feedback._buffers["B2"]
    with pytest.raises(RuntimeError, match=r"B2 is missing.*cannot be computed"):
        model.credits(
            model.backbone.trace(torch.randn(4, 8)).detached(), torch.zeros(4, dtype=torch.long)
        )


def test_floor_stop_switch_stops_the_run_when_g_L_is_under_the_floor(tmp_path, capsys):
    cli = fit(tmp_path, "--floor_stop", "true", "--diagnostics.grad_floor", "1.0", epochs=5)
    assert [c for c in cli.trainer.callbacks if isinstance(c, FloorStopping)]
    assert cli.trainer.current_epoch == 1  # stopped after the first epoch
    assert rows(cli)[-1]["floor_hit"] is True
    not_asked = fit(tmp_path / "off", "--diagnostics.grad_floor", "1.0", epochs=2)
    assert not_asked.trainer.current_epoch == 2  # flagged, but the run goes on


def test_unknown_names_list_the_choices(capsys):
    with pytest.raises(SystemExit):
        run(["fit", "--model", "Nope", *TINY])
    err = capsys.readouterr().err
    assert "--model takes one of:" in err and "DFA" in err and "FrozenBlocks" in err
    with pytest.raises(SystemExit):
        run(["fit", "--model", "DFA", "--data", "Nope"])
    err = capsys.readouterr().err
    assert "--data takes one of:" in err and "CIFAR10" in err and "SyntheticLadder" in err


def test_cifar_without_files_names_the_folder_and_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"could not download CIFAR10 .*--data.data_dir"):
        run(
            [
                "fit",
                "--model",
                "DFA",
                "--data",
                "CIFAR10",
                "--data.data_dir",
                str(tmp_path / "nothing"),
                "--trainer.default_root_dir",
                str(tmp_path),
            ]
        )


def test_a_backbone_built_for_other_data_is_refused_before_training(tmp_path):
    from lightning.pytorch import Trainer

    from faeval.data import SyntheticLadder
    from faeval.methods import DFA

    model = DFA((10,), 3, backbone=partial(ResMLP, d_hidden=8, num_blocks=1))
    dm = SyntheticLadder(input_dim=8, num_classes=3, n_train=64, n_test=32, probe_size=16)
    trainer = Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
        enable_progress_bar=False,
    )
    with pytest.raises(ValueError, match=r"built for inputs \(10,\).*data gives \(8,\)"):
        trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 0


@pytest.mark.slow
def test_console_script_help_runs():
    out = subprocess.run(
        [sys.executable, "-m", "faeval", "fit", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--floor_stop" in out and "--diagnostics.grad_floor" in out


def test_configs_are_shipped():
    assert len(CONFIGS) >= 12


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_runs_with_a_tiny_budget(tmp_path, fake_cifar, config):
    data = yaml.safe_load(config.read_text())["data"]["class_path"]
    if "CIFAR" in data:
        extra = ["--data.data_dir", str(fake_cifar), "--data.probe_size", "16",
                 "--data.batch_size", "32"]  # fmt: skip
    elif "SyntheticLadder" in data:
        extra = ["--data.n_train", "128", "--data.n_test", "64", "--data.probe_size", "32",
                 "--data.batch_size", "32"]  # fmt: skip
    else:
        extra = ["--data.probe_size", "64"]
    budget = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
              "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
              "--trainer.enable_progress_bar", "false", "--diagnostics.verbose", "false",
              "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    cli = run(["fit", "--config", str(config), *extra, *budget])
    assert cli.trainer.global_step == 2
    assert len(rows(cli)) == 2


def test_anyones_data_module_by_class_path_or_one_line_saying_what_it_lacks(tmp_path, capsys):
    cli = run(["fit", "--model", "DFA", "--data", "tests.helpers.Blobs", "--data.dim", "5",
               "--model.backbone.d_hidden", "8", "--model.backbone.num_blocks", "2", *QUIET,
               "--trainer.max_epochs", "1",
               "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    assert cli.model.backbone.input_shape == (5,)  # read off a validation batch
    assert cli.model.backbone.num_classes == 3 and len(rows(cli)) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model", "DFA", "--data", "tests.helpers.Blobs", "--data.declare", "false"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "faeval: error: Blobs does not say how many classes it has: set self.num_classes in "
        "its __init__ (faeval builds the network's head from it)"
    )
