"""The stack's shared fixture: seeds 0-2 stacked and seeds 1, 2 alone, on the aligned run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.stacked.fits import ALIGNED, fit


@pytest.fixture(scope="module")
def aligned(tmp_path_factory) -> Path:
    """Seeds 0-2 stacked, and seeds 1 and 2 alone, on the aligned tiny run (2 epochs)."""
    root = tmp_path_factory.mktemp("aligned")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every test runs (conftest): kernels may split otherwise
    try:
        fit(root / "stack", "--seeds", "0-2", data=ALIGNED)
        for seed in (1, 2):
            fit(root / "alone", "--seed_everything", str(seed), data=ALIGNED)
    finally:
        torch.set_num_threads(threads)
    return root
