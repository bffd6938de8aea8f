"""The statistics that turn per-seed accuracies into an answer: mean +- std, paired differences
with a t confidence interval, and the least-squares line of the weight-decomposition analysis.

Pure Python on lists of floats: a handful of seeds needs no numpy or scipy.
"""

import math
import statistics
from dataclasses import asdict, dataclass

# Two-sided 95% quantiles of Student's t, t_{0.975, df}, for df = 1..30 (any printed table).
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
Z_975 = 1.959964  # the normal quantile, the limit as df grows


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the table up to df 30, then the Cornish-Fisher expansion around the normal
    quantile (Abramowitz & Stegun 26.7.5), within 1e-4 of the exact value for df > 30."""
    if df < 1:
        raise ValueError(f"a t quantile needs df >= 1, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


@dataclass
class Spread:
    """Mean and sample standard deviation (n - 1 in the denominator) of one quantity over seeds."""
    mean: float
    std: float | None  # None for a single value: one seed says nothing about the spread
    n: int


def spread(values: list[float]) -> Spread:
    if not values:
        raise ValueError("no values to summarise")
    std = statistics.stdev(values) if len(values) > 1 else None
    return Spread(statistics.fmean(values), std, len(values))


@dataclass
class PairedDifference:
    """a - b, paired by seed: the seed-to-seed noise shared by both methods cancels in each pair."""
    differences: list[float]
    mean: float
    std: float
    n: int
    df: int
    t_critical: float
    ci95: tuple[float, float]

    @property
    def excludes_zero(self) -> bool:
        low, high = self.ci95
        return low > 0 or high < 0

    def to_dict(self) -> dict:
        return {**asdict(self), "ci95": list(self.ci95), "excludes_zero": self.excludes_zero}


def paired_difference(a: list[float], b: list[float]) -> PairedDifference:
    """Mean of a_i - b_i with the 95% interval mean +- t_{0.975, n-1} * std / sqrt(n) (paired t)."""
    if len(a) != len(b):
        raise ValueError(f"paired values must come in pairs, got {len(a)} and {len(b)}")
    if len(a) < 2:
        raise ValueError("a confidence interval needs at least 2 pairs")
    differences = [x - y for x, y in zip(a, b)]
    n = len(differences)
    mean, std = statistics.fmean(differences), statistics.stdev(differences)
    t = t_quantile_975(n - 1)
    half_width = t * std / math.sqrt(n)
    return PairedDifference(differences, mean, std, n, n - 1, t, (mean - half_width, mean + half_width))


def verdict(difference: PairedDifference, a: str, b: str, unit: str = "points") -> str:
    """The interval in plain words: can this many seeds tell ``a`` from ``b``?"""
    low, high = difference.ci95
    seeds = f"{difference.n} seeds"
    if not difference.excludes_zero:
        return (f"the 95% interval [{low:+.2f}, {high:+.2f}] contains zero: with {seeds}, the difference "
                f"between {a} and {b} is not distinguishable from zero.")
    better, worse = (a, b) if difference.mean > 0 else (b, a)
    return (f"the 95% interval [{low:+.2f}, {high:+.2f}] excludes zero: over {seeds}, {better} scores "
            f"higher than {worse} by {min(abs(low), abs(high)):.2f} to {max(abs(low), abs(high)):.2f} {unit}.")


@dataclass
class Line:
    """y = slope * x + intercept by least squares, with Pearson's correlation r of x and y."""
    slope: float
    intercept: float
    correlation: float | None  # None when y does not vary: r is undefined then
    n: int


def fit_line(x: list[float], y: list[float]) -> Line:
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"a line needs at least 2 (x, y) points, got {len(x)} x and {len(y)} y")
    mean_x, mean_y = statistics.fmean(x), statistics.fmean(y)
    sxx = sum((xi - mean_x) ** 2 for xi in x)
    syy = sum((yi - mean_y) ** 2 for yi in y)
    sxy = sum((xi - mean_x) * (yi - mean_y) for xi, yi in zip(x, y))
    if sxx == 0:
        raise ValueError("a line needs at least two distinct x values")
    slope = sxy / sxx
    correlation = sxy / math.sqrt(sxx * syy) if syy > 0 else None
    return Line(slope, mean_y - slope * mean_x, correlation, len(x))
