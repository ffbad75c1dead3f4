"""A progress report for logs: a few plain lines per epoch instead of a redrawn bar.

With output redirected to a file (every cluster job) a terminal progress bar writes ~160
bytes per batch on ``\\r``-joined lines and glues the per-epoch tables behind them. faeval
uses this report whenever standard output is not a terminal.
"""

from __future__ import annotations

import sys
import time

from lightning.pytorch.callbacks import ProgressBar
from typing_extensions import override


class LineProgress(ProgressBar):
    """Prints ``[faeval] epoch E: P% (b/n batches, s)`` at a few points of every epoch.

    Args:
        every_percent: a line each time the epoch passes another multiple of this share.
    """

    def __init__(self, every_percent: int = 25) -> None:
        super().__init__()
        self.every_percent = every_percent
        self._enabled = True
        self._start = 0.0
        self._next = every_percent

    @override
    def disable(self) -> None:
        self._enabled = False

    @override
    def enable(self) -> None:
        self._enabled = True

    @override
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()
        self._next = self.every_percent

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        total = self.total_train_batches
        if not self._enabled or not isinstance(total, int) or total <= 0:
            return
        done = batch_idx + 1
        percent = 100 * done // total
        if percent >= self._next and done < total:
            self._next = (percent // self.every_percent + 1) * self.every_percent
            self._line(
                f"[faeval] epoch {trainer.current_epoch + 1}: {percent}% ({done}/{total} "
                f"batches, {time.perf_counter() - self._start:.1f} s)"
            )

    @override
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._enabled:
            total = self.total_train_batches
            self._line(
                f"[faeval] epoch {trainer.current_epoch + 1} trained: {total} batches in "
                f"{time.perf_counter() - self._start:.1f} s"
            )

    def _line(self, text: str) -> None:
        if self.trainer.is_global_zero:
            print(text, file=sys.stdout, flush=True)
