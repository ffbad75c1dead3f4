"""The new backbones through the CLI: short names, every new config and the A1 sweep, tiny."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import faeval.methods
from faeval.backbones import SmallCNN, StudentNet, ViTMini
from faeval.cli import run
from tests.helpers import QUIET

CONFIGS = Path(__file__).parents[2] / "configs"
TINY = ["--trainer.max_epochs", "1", *QUIET]
TINY_LADDER = ["--data.n_train", "128", "--data.n_test", "64", "--data.probe_size", "64"]


def fit(tmp_path: Path, *args: str):
    cli = run(["fit", *args, *TINY, "--trainer.default_root_dir", str(tmp_path)])
    rows = (Path(cli.trainer.log_dir) / "diagnostics.jsonl").read_text().splitlines()
    return cli, [json.loads(row) for row in rows]


@pytest.mark.parametrize(
    ("method", "backbone", "options", "cls"),
    [
        (
            "DFA",
            "ViTMini",
            [
                "--model.backbone.d_model",
                "16",
                "--model.backbone.num_heads",
                "2",
                "--model.backbone.patch_size",
                "8",
            ],
            ViTMini,
        ),
        (
            "FA",
            "SmallCNN",
            ["--model.backbone.width", "4", "--model.backbone.num_blocks", "2"],
            SmallCNN,
        ),
        (
            "BP",
            "SmallCNN",
            [
                "--model.backbone.width",
                "4",
                "--model.backbone.downsample",
                "false",
                "--model.backbone.residual_add",
                "true",
            ],
            SmallCNN,
        ),
    ],
)
def test_short_names_pick_the_backbone_on_cifar(
    tmp_path, fake_cifar, method, backbone, options, cls
):
    cli, rows = fit(
        tmp_path,
        "--model",
        method,
        "--data",
        "CIFAR10",
        "--data.data_dir",
        str(fake_cifar),
        "--data.probe_size",
        "50",
        "--model.backbone",
        backbone,
        *options,
    )
    assert type(cli.model).__name__ == method and type(cli.model.backbone) is cls
    assert len(rows) == 2 and len(rows[-1]["h_norm"]) == cli.model.backbone.num_blocks + 1


def test_smallcnn_by_short_name_alone_is_its_documented_default(tmp_path, fake_cifar):
    # jsonargparse carries same-named init_args over from the default backbone (ResMLP:
    # num_blocks=4, residual_add=true); SmallCNN's defaults agree with them.
    cli, _ = fit(
        tmp_path,
        "--model",
        "DFA",
        "--data",
        "CIFAR10",
        "--data.probe_size",
        "50",
        "--data.data_dir",
        str(fake_cifar),
        "--model.backbone",
        "SmallCNN",
    )
    cnn = cli.model.backbone
    assert cnn.state_shapes() == SmallCNN((3, 32, 32), 10).state_shapes()
    assert cnn.num_blocks == 4 and not cnn.residual_add


def test_short_names_pick_studentnet_on_the_ladder(tmp_path):
    cli, rows = fit(
        tmp_path,
        "--model",
        "DFA",
        "--data",
        "SyntheticLadder",
        *TINY_LADDER,
        "--data.input_dim",
        "8",
        "--data.width",
        "16",
        "--data.depth",
        "3",
        "--model.backbone",
        "StudentNet",
        "--model.backbone.width",
        "16",
        "--model.backbone.depth",
        "3",
    )
    assert type(cli.model.backbone) is StudentNet and cli.model.backbone.num_blocks == 2
    assert len(rows[-1]["cos"]) == 3


@pytest.mark.parametrize("config", ["vitmini_dfa.yaml", "smallcnn_bp.yaml", "smallcnn_dfa.yaml"])
def test_cifar_config_runs_with_a_tiny_budget(tmp_path, fake_cifar, config):
    cli, rows = fit(
        tmp_path,
        "--config",
        str(CONFIGS / config),
        "--data.data_dir",
        str(fake_cifar),
        "--data.probe_size",
        "50",
    )
    assert cli.trainer.current_epoch == 1
    assert len(rows) == 2 and len(rows[-1]["g_norm"]) == cli.model.backbone.num_blocks + 1


def test_studentnet_config_runs_with_a_tiny_budget(tmp_path):
    cli, rows = fit(tmp_path, "--config", str(CONFIGS / "studentnet_dfa_alpha1.yaml"), *TINY_LADDER)
    student, ladder = cli.model.backbone, cli.datamodule
    assert (student.alpha, student.num_blocks + 1) == (ladder.alpha, ladder.depth) == (1.0, 4)
    assert len(rows) == 2 and len(rows[-1]["h_norm"]) == student.num_blocks + 1


def test_the_a1_sweep_covers_the_grid_and_each_run_parses_and_trains(tmp_path):
    sweep = yaml.safe_load((CONFIGS / "sweeps" / "ladder_a1.yaml").read_text())
    settings = sweep["settings"]
    grid = {(s["data.alpha"], s["data.depth"]) for s in settings.values()}
    assert grid == {(a, d) for a in (0.0, 0.5, 1.0) for d in (2, 4)} and len(settings) == 6
    for s in settings.values():  # the student matches its teacher in every run
        assert (s["model.backbone.alpha"], s["model.backbone.depth"]) == (
            s["data.alpha"],
            s["data.depth"],
        )
    assert all(m in faeval.methods.__all__ for m in sweep["methods"])
    assert (CONFIGS / "sweeps" / sweep["base"]).is_file() and sweep["seeds"]
    methods = sweep["methods"]
    for i, (name, setting) in enumerate(settings.items()):  # each setting once, methods in turn
        overrides = [arg for key, value in setting.items() for arg in (f"--{key}", str(value))]
        cli, _ = fit(
            tmp_path / name,
            "--config",
            str(CONFIGS / "sweeps" / sweep["base"]),
            "--model",
            methods[i % len(methods)],
            "--seed_everything",
            str(sweep["seeds"][0]),
            *overrides,
            *TINY_LADDER,
        )
        assert type(cli.model).__name__ == methods[i % len(methods)]
        assert cli.datamodule.alpha == cli.model.backbone.alpha == setting["data.alpha"]
        assert cli.datamodule.depth == cli.model.backbone.num_blocks + 1 == setting["data.depth"]
