"""faeval used as a library, from a Python script with a plain Lightning Trainer."""

from __future__ import annotations

import subprocess
import sys

import pytest

#: Python scripts in their own processes, a few seconds each: outside the fast lane.
pytestmark = [pytest.mark.slow]

SCRIPT = """
import lightning as L
from faeval import DFA, Diagnostics, ResMLP, SyntheticLadder

data = SyntheticLadder(input_dim=8, num_classes=3, n_train=64, n_test=32, batch_size=32,
                       probe_size=32)
# A built network: its input shape and class count are read off it.
model = DFA(backbone=ResMLP(input_shape=(8,), num_classes=3, d_hidden=8, num_blocks=2))
trainer = L.Trainer(max_epochs=1, callbacks=[Diagnostics()], default_root_dir={root!r},
                    enable_progress_bar=False)
trainer.fit(model, datamodule=data)
"""


def test_a_script_trains_quietly_and_its_end_message_names_only_what_was_written(tmp_path):
    code = SCRIPT.format(root=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout + done.stderr
    for noise in ("srun", "💡 Tip", "LeafSpec", "Traceback"):
        assert noise not in printed, noise
    (end,) = [line for line in printed.splitlines() if line.startswith("[faeval] run folder")]
    run_dir = tmp_path / "lightning_logs" / "version_0"
    assert str(run_dir) in end and "diagnostics.jsonl" in end and "#custom_scalars" in end
    assert ("config.yaml" in end) == (run_dir / "config.yaml").exists()
    assert ("checkpoints/" in end) == (run_dir / "checkpoints").exists()


NAMED = """
import lightning as L
from faeval import DFA, Diagnostics, ResMLP, SyntheticLadder, run_logger

L.seed_everything(3)
data = SyntheticLadder(input_dim=8, num_classes=3, n_train=64, n_test=32, batch_size=32,
                       probe_size=32)
model = DFA(backbone=ResMLP, input_shape=(8,), num_classes=3)
for _ in range(2):  # the second run of the same name goes beside the first, never into it
    trainer = L.Trainer(max_epochs=1, callbacks=[Diagnostics()], enable_progress_bar=False,
                        logger=run_logger(model, data, seed=3, root={root!r}))
    trainer.fit(model, datamodule=data)
"""


def test_a_script_run_is_named_and_recorded_as_faeval_fit_names_and_records_it(tmp_path):
    from faeval.cli.lightning import check_arguments

    done = subprocess.run(
        [sys.executable, "-c", NAMED.format(root=str(tmp_path))],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runs = tmp_path / "lightning_logs" / "SyntheticLadder" / "DFA"
    assert sorted(p.name for p in runs.iterdir()) == ["seed3", "seed3-run2"]
    for run_dir in runs.iterdir():
        assert (run_dir / "diagnostics.jsonl").is_file() and (run_dir / "faeval_run.json").is_file()
        config = run_dir / "config.yaml"
        check_arguments(["fit", "--config", str(config)])  # parses as faeval fit parses it
        text = config.read_text()
        assert "faeval.methods.dfa.DFA" in text and "SyntheticLadder" in text
        assert "seed_everything: 3" in text
