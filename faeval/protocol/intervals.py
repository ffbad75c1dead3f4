"""How sure a verdict across seeds is: Student-t intervals of a per-seed quantity.

A cross-seed verdict compares a per-seed quantity with its threshold: for (d) the margin
over FrozenBlocks, acc_s − frozen_s, both runs of the same seed s (paired by seed); for
Mode 2 the clearance of the deep cosine over the top of its own run's null band. With n
seeds the mean m and sample standard deviation s give the two-sided interval

    m ± t_{(1+level)/2, n−1} · s / √n

(Student's t with n − 1 degrees of freedom; the seeds are taken as independent draws of the
run). The verdict is settled when the interval lies on one side of the threshold, and the
number of seeds that would settle it is the smallest n whose half-width falls below
|m − threshold|, if the mean and spread stay as measured.

Pure Python (no torch, no scipy): the t quantile inverts the t distribution function,
written with the regularised incomplete beta function.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

#: The confidence level of every interval faeval reports.
LEVEL = 0.95
#: The most seeds ``seeds_to_settle`` looks for; beyond it the verdict is called unsettleable
#: in practice (the mean sits on the threshold).
MAX_SEEDS = 1000


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, for 0 < p < 1 (bisection to machine precision).

    Raises:
        ValueError: p outside (0, 1) or df <= 0.
    """
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, 2.0 * high
    for _ in range(200):
        mid = 0.5 * (low + high)
        if mid in (low, high):
            break
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return 0.5 * (low + high)


def half_width(sd: float, n: int, level: float = LEVEL) -> float:
    """t_{(1+level)/2, n−1} · sd / √n, the half-width of the interval of a mean of n values."""
    return t_quantile((1.0 + level) / 2.0, n - 1) * sd / math.sqrt(n)


@dataclass(frozen=True)
class Interval:
    """The Student-t interval of the mean of a per-seed quantity, against its threshold.

    Attributes:
        mean: the mean over seeds.
        low: lower end of the interval.
        high: upper end.
        sd: the sample standard deviation over seeds.
        n: the number of seeds.
        level: the confidence level.
        threshold: the value the verdict compares the quantity with (PASS above).
        seeds_to_settle: where the interval contains the threshold, the seeds that would
            settle it if the mean and spread hold (None: not estimable, or more than
            ``MAX_SEEDS``); None where it is settled.
    """

    mean: float
    low: float
    high: float
    sd: float
    n: int
    level: float
    threshold: float
    seeds_to_settle: int | None = None

    @property
    def settled(self) -> bool:
        """Whether the interval lies wholly on one side of the threshold."""
        return self.low > self.threshold or self.high < self.threshold

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def seeds_to_settle(
    mean: float, sd: float, threshold: float, level: float = LEVEL, start: int = 2
) -> int | None:
    """The fewest seeds n >= ``start`` whose interval would exclude ``threshold``.

    Assumes the mean and the standard deviation stay as measured; None when they cannot
    settle it within ``MAX_SEEDS`` seeds (the mean on the threshold) or sd is not finite.
    """
    gap = abs(mean - threshold)
    if not (math.isfinite(sd) and math.isfinite(gap)) or gap == 0.0:
        return None
    for n in range(max(start, 2), MAX_SEEDS + 1):
        if half_width(sd, n, level) < gap:
            return n
    return None


def paired_interval(
    values: Sequence[float], threshold: float, level: float = LEVEL
) -> Interval | None:
    """The interval of the mean of per-seed ``values`` against ``threshold``.

    ``values`` are already paired by seed (a difference within each seed), so the interval
    is a one-sample t interval of those differences. None for fewer than two values.
    """
    vals = [float(v) for v in values]
    if len(vals) < 2 or not all(math.isfinite(v) for v in vals):
        return None
    mean, sd, n = statistics.fmean(vals), statistics.stdev(vals), len(vals)
    width = half_width(sd, n, level)
    interval = Interval(mean, mean - width, mean + width, sd, n, level, threshold)
    if interval.settled:
        return interval
    return Interval(
        mean, mean - width, mean + width, sd, n, level, threshold,
        seeds_to_settle(mean, sd, threshold, level, start=n + 1),
    )  # fmt: skip
