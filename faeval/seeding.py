"""The one rule for seeds that default to the run's seed."""

from __future__ import annotations

import torch


def resolve_seed(seed: int | None) -> int:
    """``seed``, or the run's seed (the one ``seed_everything`` set) when it is None.

    Every seeded draw of faeval that the user may leave unset (feedback matrices, helper
    nets, the batch order) goes through here, so one ``--seed_everything`` fixes them all.
    """
    return torch.initial_seed() % 2**31 if seed is None else seed
