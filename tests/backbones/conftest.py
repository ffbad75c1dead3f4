"""Fixtures of the backbone tests: a quiet CPU trainer factory."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from lightning.pytorch import Trainer


@pytest.fixture
def quiet_trainer(tmp_path) -> Callable[..., Trainer]:
    """Builds CPU trainers without logger, progress bar, summary or checkpoints."""

    def build(**kwargs) -> Trainer:
        defaults = dict(
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            default_root_dir=str(tmp_path),
            num_sanity_val_steps=0,
            limit_val_batches=0,
        )
        return Trainer(**{**defaults, **kwargs})

    return build
