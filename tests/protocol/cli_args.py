"""Command-line pieces shared by the protocol's CLI tests: a tiny run, cheap protocol pieces."""

from __future__ import annotations

TINY = [
    "--data",
    "SyntheticLadder",
    "--data.input_dim",
    "8",
    "--data.num_classes",
    "3",
    "--data.n_train",
    "128",
    "--data.n_test",
    "64",
    "--data.batch_size",
    "32",
    "--data.probe_size",
    "64",
    "--model.backbone.d_hidden",
    "8",
    "--model.backbone.num_blocks",
    "2",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--diagnostics.verbose",
    "false",
    "--trainer.log_every_n_steps",
    "1",
    "--trainer.max_epochs",
    "2",
]

#: The protocol's pieces at test size (the probe of 64 holds 4 stability batches of 16).
CHEAP = {
    "null_draws": 3,
    "directions": 4,
    "negative_draws": 2,
    "stability_batches": 4,
    "stability_batch_size": 16,
}


def protocol_args(every: int = 1, verbose: bool = False) -> list[str]:
    """``--trainer.callbacks+=Protocol`` with the cheap settings."""
    args = [
        "--trainer.callbacks+=Protocol",
        "--trainer.callbacks.every_n_epochs",
        str(every),
        "--trainer.callbacks.verbose",
        str(verbose).lower(),
    ]
    for key, value in CHEAP.items():
        args += [f"--trainer.callbacks.{key}", str(value)]
    return args


AUDIT = [arg for key, value in CHEAP.items() for arg in (f"--{key}", str(value))]
