"""Seeds: the run's seed resolved once, and streams of their own mixed from it."""

from __future__ import annotations

import itertools

import torch

from faeval.seeding import mixed_seed, resolve_seed


def test_a_given_seed_is_kept_and_none_takes_the_global_one():
    assert resolve_seed(7) == 7
    torch.manual_seed(123)
    assert resolve_seed(None) == 123


def test_mixed_seeds_are_fixed_by_their_words_and_distinct_across_them():
    pairs = list(itertools.product(range(4), range(3), range(3)))
    seeds = [mixed_seed(s, purpose, t) for s, purpose, t in pairs]
    assert seeds == [mixed_seed(s, purpose, t) for s, purpose, t in pairs]  # deterministic
    assert len(set(seeds)) == len(seeds)
    # Packing (seed, t) as seed·2³² + t would give every seed the same torch stream: not these.
    assert mixed_seed(0, 1, 2**32) != mixed_seed(1, 1, 0)
    assert all(0 <= s < 2**32 for s in seeds)


def test_a_mixed_stream_does_not_repeat_the_runs_own_draws():
    """A feedback matrix drawn from the run's seed itself would be the weight of the same
    shape times a constant; from the mixed seed it is unrelated to it."""
    torch.manual_seed(5)
    weight = torch.randn(64, 32)
    same = torch.randn(64, 32, generator=torch.Generator().manual_seed(5))
    mixed = torch.randn(64, 32, generator=torch.Generator().manual_seed(mixed_seed(5, 0)))
    cos = torch.nn.functional.cosine_similarity
    assert cos(weight.flatten(), same.flatten(), dim=0) > 0.999  # the trap
    assert abs(cos(weight.flatten(), mixed.flatten(), dim=0)) < 0.1
