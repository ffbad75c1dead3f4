"""Early stopping on the gradient floor of diagnostic (b)."""

from __future__ import annotations

import sys

from lightning.pytorch.callbacks import EarlyStopping
from typing_extensions import override


class FloorStopping(EarlyStopping):
    """Stops a run once ‖g_L‖ (``diag/g_L``, logged by ``Diagnostics``) falls below the floor.

    Below the floor every cosine against g is numerically meaningless, so the rest of the run
    cannot be audited. A non-finite ‖g_L‖ stops the run too. It never stops for lack of
    improvement: ‖g_L‖ may rise or fall in a healthy run.

    Args:
        grad_floor: the floor (default 1e-7, diagnostic (b) of docs/protocol.md).
    """

    def __init__(self, grad_floor: float = 1e-7) -> None:
        super().__init__(
            monitor="diag/g_L",
            mode="min",
            stopping_threshold=grad_floor,
            patience=sys.maxsize,
            check_finite=True,
            check_on_train_epoch_end=True,
            verbose=True,
        )
        self.grad_floor = grad_floor

    @override
    def _evaluate_stopping_criteria(self, current):
        should_stop, reason = super()._evaluate_stopping_criteria(current)
        if should_stop and reason:
            reason += (
                " Diagnostic (b): the true gradient at the last hidden layer is at the floor,"
                " so cosines against it are unmeasurable from here on."
            )
        return should_stop, reason
