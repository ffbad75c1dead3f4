"""Command-line pieces of the stack's tests: tiny runs, their folders, checkpoints and rows."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from faeval.cli import run
from faeval.runlog import RunLog
from tests.helpers import QUIET, TINY_RUN

#: A tiny run whose every parameter has a multiple of 16 floats.
ALIGNED = [
    "--data", "SyntheticLadder",
    "--data.input_dim", "16", "--data.num_classes", "16",
    "--data.n_train", "160", "--data.n_test", "64",
    "--data.batch_size", "48", "--data.probe_size", "64",
    "--model.backbone.d_hidden", "16", "--model.backbone.num_blocks", "2",
    *QUIET,
]  # fmt: skip


def fit(root: Path, *args: str, epochs: int = 2, data=TINY_RUN, model: str = "DFA"):
    return run(
        [
            "fit",
            "--model",
            model,
            *data,
            "--trainer.max_epochs",
            str(epochs),
            "--trainer.default_root_dir",
            str(root),
            *args,
        ]
    )


def seed_dir(root: Path, seed: int, method: str = "DFA") -> Path:
    return root / "lightning_logs" / "SyntheticLadder" / method / f"seed{seed}"


def checkpoint(run_dir: Path) -> dict:
    """The run's last checkpoint (a resumed run keeps the one it resumed from too)."""
    path = max((run_dir / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    return torch.load(path, weights_only=True)


def rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in RunLog(run_dir).rows()]


def tensors(ckpt: dict) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint's weights and optimizer state, by name."""
    out = {f"state_dict/{k}": v for k, v in ckpt["state_dict"].items()}
    for i, entry in ckpt["optimizer_states"][0]["state"].items():
        out |= {f"optimizer/{i}/{k}": v for k, v in entry.items()}
    return out


def assert_same(got: dict, want: dict) -> None:
    """The same checkpoint contents: every tensor to the bit, any other value (a method's
    extra state, BRSF's draw counter) equal."""
    assert got.keys() == want.keys()
    for key, value in want.items():
        same = (
            torch.equal(got[key], value) if isinstance(value, torch.Tensor) else got[key] == value
        )
        assert same, key


def assert_close_rows(got: list[dict], want: list[dict], rel: float) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            x, y = a[key], b[key]
            xs, ys = (x, y) if isinstance(x, list) else ([x], [y])
            for u, v in zip(xs, ys, strict=True):
                if isinstance(u, float) and isinstance(v, float) and math.isfinite(v):
                    assert u == pytest.approx(v, rel=rel, abs=1e-12), key
                else:
                    assert u == v, key
