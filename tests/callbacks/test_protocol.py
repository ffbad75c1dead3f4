"""The Protocol callback: when it measures, what it writes and logs, what it costs."""

from __future__ import annotations

import json
from pathlib import Path

from faeval.callbacks import Protocol
from faeval.cli import run
from tests.protocol.cli_args import TINY, protocol_args


def test_protocol_measures_every_n_epochs_and_at_an_early_stop(tmp_path, capsys):
    args = protocol_args(every=2, verbose=True)
    cli = run(
        [
            "fit",
            "--model",
            "DFA",
            *TINY,
            *args,
            "--trainer.max_epochs",
            "3",
            "--trainer.default_root_dir",
            str(tmp_path / "a"),
        ]
    )
    assert any(isinstance(c, Protocol) for c in cli.trainer.callbacks)
    rows = [
        json.loads(x)
        for x in (Path(cli.trainer.log_dir) / "protocol.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in rows] == [2, 3]  # every 2 epochs, and the last one
    assert rows[-1]["null"]["draws"] == 3 and len(rows[-1]["rho"]["rho"]) == 3
    assert rows[-1]["epoch_seconds"] > 0 and rows[-1]["seconds"]["rho"] > 0
    assert "protocol/rho_deep" in cli.trainer.callback_metrics
    out = capsys.readouterr().out
    assert "[faeval] protocol at epoch 3" in out and "epochs of" in out  # its cost, in epochs

    # A floor stop after epoch 1 (floor set above any ‖g_L‖): measured at the end anyway.
    cli = run(
        [
            "fit",
            "--model",
            "DFA",
            *TINY,
            *args,
            "--trainer.max_epochs",
            "3",
            "--floor_stop",
            "true",
            "--diagnostics.grad_floor",
            "10.0",
            "--trainer.default_root_dir",
            str(tmp_path / "b"),
        ]
    )
    rows = [
        json.loads(x)
        for x in (Path(cli.trainer.log_dir) / "protocol.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in rows] == [1]
