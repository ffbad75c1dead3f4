"""The run's last checkpoint: every epoch and, as an option, every N training steps."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override


class LastCheckpoint(ModelCheckpoint):
    """Keeps one file, ``checkpoints/last.ckpt``: the run's latest state, to resume from.

    Saved at the end of every epoch and, with ``every_n_train_steps``, after every N-th
    training step too, so a killed run loses at most the work since. A mid-epoch checkpoint
    holds the batch order's position (the training batches' state) and the epoch's running
    means, so the resumed run continues with the next batch, bit for bit. Written through
    the trainer's checkpoint IO (``AtomicCheckpointIO`` under ``faeval fit``: never torn).

    Args:
        every_n_train_steps: also save after every N-th training step (0: epoch ends only).
    """

    def __init__(self, every_n_train_steps: int = 0) -> None:
        if every_n_train_steps < 0:
            raise ValueError(f"every_n_train_steps must be >= 0, got {every_n_train_steps}")
        super().__init__(
            save_top_k=0, save_last=True, every_n_epochs=1, enable_version_counter=False
        )
        self.every_n_steps = every_n_train_steps

    @property
    @override
    def state_key(self) -> str:
        return type(self).__name__

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Nothing is ranked here, so a run folder that moved (a sweep copied elsewhere) has
        # nothing to lose: no warning, and last.ckpt is found by its name.
        if state_dict.get("dirpath") == self.dirpath:
            self.last_model_path = state_dict.get("last_model_path", "")

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Every epoch, after its validation and rows (ModelCheckpoint saves "last" only
        # beside a top-k save, and at validation end when validation is not every epoch).
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pass  # nothing monitored: the epoch end saves

    @override
    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # ModelCheckpoint's own step saving warns on every save under manual optimization;
        # this saves the state after the step, which is what a resumed run continues from.
        if self.every_n_steps < 1 or trainer.global_step % self.every_n_steps:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # the epoch-end save follows, with the epoch's rows and validation done
        if self._should_skip_saving_checkpoint(trainer):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
