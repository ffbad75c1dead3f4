"""The one rule for seeds that default to the run's seed."""

from __future__ import annotations

import numpy as np
import torch


def resolve_seed(seed: int | None) -> int:
    """``seed``, or the run's seed (the one ``seed_everything`` set) when it is None.

    Every seeded draw of faeval that the user may leave unset (feedback matrices, helper
    nets, the batch order) goes through here, so one ``--seed_everything`` fixes them all.
    """
    return torch.initial_seed() % 2**31 if seed is None else seed


def mixed_seed(seed: int, *words: int) -> int:
    """A seed for a generator of its own, mixed from ``seed`` and ``words`` (numpy's
    ``SeedSequence``): one independent stream per (seed, words).

    Two traps it avoids: a generator seeded with the run's seed itself repeats the draws of
    the weights' initialisation (the global generator starts from the same seed, so a
    feedback matrix drawn like a weight of the same shape would be that weight times a
    constant), and torch's CPU generator keeps only 32 bits of its seed (a pair packed as
    seed·2³² + t collides across seeds).
    """
    return int(np.random.SeedSequence([seed, *words]).generate_state(1)[0])
