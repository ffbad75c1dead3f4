"""Fixtures of the backbone tests: a quiet CPU trainer factory."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
from lightning.pytorch import Trainer

from tests.helpers import quiet_trainer as build


@pytest.fixture
def quiet_trainer(tmp_path) -> Callable[..., Trainer]:
    """Builds CPU trainers without logger, progress bar, summary, checkpoints or validation."""
    return partial(build, tmp_path)
