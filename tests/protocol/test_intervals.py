"""Cross-seed intervals against scipy and a case worked by hand."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from faeval.protocol.intervals import (
    Interval,
    half_width,
    incomplete_beta,
    paired_interval,
    seeds_to_settle,
    t_cdf,
    t_quantile,
)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 9, 29, 120, 5000])
@pytest.mark.parametrize("p", [0.5, 0.6, 0.9, 0.95, 0.975, 0.995, 0.9995, 0.025])
def test_t_quantile_and_cdf_match_scipy(df, p):
    assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-10, abs=1e-12)
    for t in (-3.0, -0.4, 0.0, 1.3, 8.0):
        assert t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("a, b", [(0.5, 0.5), (1.0, 3.0), (2.5, 0.5), (50.0, 0.5)])
def test_incomplete_beta_matches_scipy(a, b):
    for x in (0.0, 0.01, 0.3, 0.5, 0.97, 1.0):
        assert incomplete_beta(a, b, x) == pytest.approx(stats.beta.cdf(x, a, b), abs=1e-13)


def test_the_interval_of_one_two_three_worked_by_hand():
    # mean 2, sd 1, n 3: half-width t_{0.975, 2} / √3 = 4.302652729749464 / 1.7320508 = 2.48414
    iv = paired_interval([1.0, 2.0, 3.0], threshold=0.0)
    assert (iv.mean, iv.sd, iv.n) == (2.0, 1.0, 3)
    assert iv.high - iv.mean == pytest.approx(4.302652729749464 / math.sqrt(3), rel=1e-12)
    assert not iv.settled  # −0.484 < 0 < 4.484
    # Four seeds, mean and spread alike: t_{0.975,3}·1/2 = 1.591 < 2, so four settle it.
    assert iv.seeds_to_settle == 4


@pytest.mark.parametrize(
    "values, threshold",
    [([0.031, 0.052, 0.047], 0.02), ([-0.004, -0.011, 0.001, -0.006], 0.02), ([0.2, 0.25], 0.0)],
)
def test_intervals_match_scipys_t_interval(values, threshold):
    iv = paired_interval(values, threshold)
    n = len(values)
    low, high = stats.t.interval(0.95, n - 1, loc=stats.tmean(values), scale=stats.sem(values))
    assert (iv.low, iv.high) == pytest.approx((low, high), rel=1e-10)
    assert iv.settled == (low > threshold or high < threshold)


def test_seeds_to_settle_is_the_first_n_whose_scipy_interval_excludes_the_threshold():
    mean, sd, threshold = 0.03, 0.02, 0.02
    n = seeds_to_settle(mean, sd, threshold, start=4)
    for k in range(4, n + 1):
        width = stats.t.ppf(0.975, k - 1) * sd / math.sqrt(k)
        assert (width < abs(mean - threshold)) == (k == n)
    assert half_width(sd, n) == pytest.approx(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))
    assert seeds_to_settle(0.02, 0.01, 0.02) is None  # the mean on the threshold
    assert seeds_to_settle(0.0200001, 0.05, 0.02) is None  # beyond MAX_SEEDS


def test_one_seed_gives_no_interval_and_a_settled_one_needs_no_more_seeds():
    assert paired_interval([0.4], 0.0) is None
    iv = paired_interval([0.5, 0.52, 0.49], 0.0)
    assert isinstance(iv, Interval) and iv.settled and iv.seeds_to_settle is None
    with pytest.raises(ValueError, match="0 < p < 1"):
        t_quantile(1.0, 3)
