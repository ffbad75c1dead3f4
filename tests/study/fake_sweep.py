"""A sweep folder written by hand, as ``faeval sweep`` lays one out, for the report's and the
aggregate TensorBoard's tests: no training, every figure known in advance.

``write_fake_sweep(root)`` writes ``root/runs/tiny/<method>/seed<S>/`` for BP, DFA and
FrozenBlocks × seeds 0, 1, 2: ``diagnostics.jsonl`` (epochs 0..EPOCHS, written with
``RunLog`` as the Diagnostics callback writes them), the last ``protocol.jsonl`` row (DFA
with a null band, BP and FrozenBlocks judged on ρ), ``config.yaml`` and ``status.json``
(the fields of ``faeval.study.state.record_status``), ``end.json`` (``faeval.runend``),
plus ``sweep.json``.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import yaml

from faeval.runend import write_end
from faeval.runlog import DEPTH_BASELINE, RunLog

METHODS = ("BP", "DFA", "FrozenBlocks")
SEEDS = (0, 1, 2)
EPOCHS = 3
LAYERS = 4  # l = 0..3
SECONDS = {"BP": 10.0, "DFA": 12.0, "FrozenBlocks": 8.0}
GRAD_FLOOR, GROWTH_THRESHOLD = 1e-7, 50.0


def rows_of(method: str, seed: int) -> list[dict]:
    """The epoch rows of one run: DFA's ‖h_L‖ grows by decades, BP's barely."""
    rng = random.Random(f"{method}-{seed}")
    rate = {"BP": 0.1, "DFA": 0.7, "FrozenBlocks": 0.0}[method]
    acc0 = {"BP": 0.86, "DFA": 0.83, "FrozenBlocks": 0.80}[method]
    rows, h0 = [], None
    for epoch in range(EPOCHS + 1):
        h = [10 ** (0.2 * l + rate * epoch * l / (LAYERS - 1) + rng.gauss(0, 0.05))
             for l in range(LAYERS)]  # fmt: skip
        g = [10 ** (-2 - 0.3 * epoch - 0.2 * l + rng.gauss(0, 0.05)) for l in range(LAYERS)]
        h0 = h0 or h
        cos = [1.0] * LAYERS if method != "DFA" else [0.9] + [rng.uniform(0.2, 0.4)] * 3
        deep = sum(cos[1:]) / (LAYERS - 1)
        exact = method != "DFA"
        rows.append({
            "epoch": epoch, "step": 10 * epoch, "method": method, "seed": seed,
            "role": DEPTH_BASELINE if method == "FrozenBlocks" else "method",
            "h_norm": h, "g_norm": g, "cos": cos,
            "h_ratio": [b / a for a, b in itertools.pairwise(h)],
            "growth": max(x / x0 for x, x0 in zip(h, h0, strict=True)),
            "h_L": h[-1], "g_L": g[-1], "floor_hit": False, "nonfinite": False,
            "cos_l0": cos[0], "cos_deep": deep, "gamma": sum(cos) / LAYERS,
            "probe_loss": 1.0, "probe_acc": 0.5,
            "test/acc": None if epoch == 0 else acc0 + 0.01 * epoch + rng.gauss(0, 0.01),
            "grad_floor": GRAD_FLOOR, "growth_threshold": GROWTH_THRESHOLD,
            "credit_error": [1e-9 if exact else rng.uniform(0.5, 1.0) for _ in range(LAYERS)],
            "credit_scale": [1.0 if exact else 0.5 for _ in range(LAYERS)],
            "seconds": 0.1,
        })  # fmt: skip
    return rows


def protocol_of(method: str, seed: int, last: dict) -> dict:
    """The last protocol row: DFA has a null band; BP and FrozenBlocks are judged on ρ."""
    rng = random.Random(f"protocol-{method}-{seed}")
    rho = [rng.uniform(0.6, 0.9) for _ in range(LAYERS)]
    row = {
        "epoch": last["epoch"], "step": last["step"], "method": method,
        "rho": {"rho": rho, "positive": [1.0] * LAYERS,
                "negative_mean": [rng.uniform(-0.05, 0.05) for _ in range(LAYERS)],
                "negative_std": [rng.uniform(0.01, 0.03) for _ in range(LAYERS)]},
        "stability": {"credit": rng.uniform(0.3, 0.6), "gradient": 0.5, "layer": 2,
                      "batches": 4, "batch_size": 8},
        "has_feedback": method == "DFA", "seconds": {"rho": 0.1, "null": 0.1},
    }  # fmt: skip
    if method == "DFA":
        null_mean = [rng.uniform(-0.02, 0.02) for _ in range(LAYERS)]
        row["null"] = {
            "cos": last["cos"], "null_mean": null_mean, "null_std": [0.02] * LAYERS,
            "deep": last["cos_deep"], "deep_mean": sum(null_mean[1:]) / (LAYERS - 1),
            "deep_std": rng.uniform(0.01, 0.04), "draws": 8,
        }  # fmt: skip
    else:
        row["null"], row["null_note"] = None, "no feedback draw"
    return row


CONFIG = {
    "data": {"class_path": "faeval.data.SyntheticLadder"},
    "model": {"class_path": "faeval.methods.DFA", "init_args": {"backbone": {
        "class_path": "faeval.backbones.ResMLP", "init_args": {"d_hidden": 8, "num_blocks": 3}}}},
}  # fmt: skip


def write_fake_sweep(root: Path) -> Path:
    """Writes the sweep into ``root`` and returns ``root``."""
    planned = []
    for method in METHODS:
        for seed in SEEDS:
            run_dir = root / "runs" / "tiny" / method / f"seed{seed}"
            log = RunLog(run_dir)
            rows = rows_of(method, seed)
            for row in rows:
                log.append(row)
            log.append_protocol(protocol_of(method, seed, rows[-1]))
            (run_dir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
            status = {
                "setting": "tiny", "method": method, "seed": seed, "status": "ok", "rc": 0,
                "epochs": rows[-1]["epoch"], "seconds": SECONDS[method] + seed,
                "test_acc": rows[-1]["test/acc"], "g_L": rows[-1]["g_L"],
                "growth": rows[-1]["growth"], "run_dir": str(run_dir.relative_to(root)),
                "continued": 0, "ended": "trained the planned epochs", "error": "", "cmd": [],
            }  # fmt: skip
            (run_dir / "status.json").write_text(json.dumps(status, indent=1))
            write_end(run_dir, "finished", "trained the planned epochs", epochs=rows[-1]["epoch"])
            planned.append(
                {"setting": "tiny", "method": method, "seed": seed, "run_dir": str(run_dir)}
            )
    (root / "sweep.json").write_text(json.dumps({"runs": planned}))
    return root
