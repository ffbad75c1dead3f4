"""Command-line pieces shared by the protocol's CLI tests: a tiny run, cheap protocol pieces."""

from __future__ import annotations

from tests.helpers import TINY_RUN

TINY = [*TINY_RUN, "--trainer.max_epochs", "2"]

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
        args += [f"--trainer.callbacks.settings.{key}", str(value)]
    return args


AUDIT = [arg for key, value in CHEAP.items() for arg in (f"--protocol.{key}", str(value))]
