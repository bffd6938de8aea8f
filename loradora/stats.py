"""The statistics that turn per-seed accuracies into an answer: mean +- std, paired differences
with a t confidence interval, and the least-squares line of the weight-decomposition analysis.

Pure Python on lists of floats: a handful of seeds needs no numpy or scipy.
"""

import math
import statistics
from dataclasses import asdict, dataclass

def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom, through the regularised incomplete
    beta function: P(|T| > |t|) = I_x(df/2, 1/2) with x = df / (df + t^2)."""
    tail = _incomplete_beta(df / 2, 0.5, df / (df + t * t)) / 2
    return 1 - tail if t > 0 else tail


def t_quantile(p: float, df: int) -> float:
    """The t with P(T <= t) = p, by bisection on ``t_cdf`` to 1e-12 (p in (0.5, 1))."""
    if df < 1:
        raise ValueError(f"a t quantile needs df >= 1, got {df}")
    if not 0.5 < p < 1:
        raise ValueError(f"p must lie in (0.5, 1), got {p}")
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, 2 * high
    while high - low > 1e-12 * high:
        middle = (low + high) / 2
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the two-sided 95% critical value."""
    return t_quantile(0.975, df)


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) by its continued fraction (modified Lentz; Numerical Recipes 6.4, betai and betacf),
    using the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) where the fraction converges slowly."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1 - _incomplete_beta(b, a, 1 - x)
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    return math.exp(log_front) * fraction / a


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
    """a - b, paired by seed: the seed-to-seed noise shared by both methods cancels in each pair.

    ``ci95`` is the 95% interval of this difference alone; when it is one of several compared at
    once (a rank sweep), ``ci`` is widened to the Bonferroni level ``confidence`` = 1 - 0.05 / k, so
    the k intervals hold together with 95% confidence, and the verdict reads ``ci``.
    """
    differences: list[float]
    mean: float
    std: float
    n: int
    df: int
    t_critical: float
    ci95: tuple[float, float]
    confidence: float = 0.95
    ci: tuple[float, float] | None = None

    def __post_init__(self):
        if self.ci is None:
            self.ci = self.ci95

    @property
    def excludes_zero(self) -> bool:
        low, high = self.ci
        return low > 0 or high < 0

    def to_dict(self) -> dict:
        return {**asdict(self), "ci95": list(self.ci95), "ci": list(self.ci), "excludes_zero": self.excludes_zero}


def paired_difference(a: list[float], b: list[float], comparisons: int = 1) -> PairedDifference:
    """Mean of a_i - b_i with the 95% interval mean +- t_{0.975, n-1} * std / sqrt(n) (paired t), and
    with ``comparisons`` > 1 the Bonferroni interval at 1 - 0.05 / comparisons as ``ci``."""
    if len(a) != len(b):
        raise ValueError(f"paired values must come in pairs, got {len(a)} and {len(b)}")
    if len(a) < 2:
        raise ValueError("a confidence interval needs at least 2 pairs")
    differences = [x - y for x, y in zip(a, b)]
    n = len(differences)
    mean, std = statistics.fmean(differences), statistics.stdev(differences)
    t = t_quantile_975(n - 1)
    ci95 = (mean - t * std / math.sqrt(n), mean + t * std / math.sqrt(n))
    confidence = 1 - 0.05 / comparisons
    t_adjusted = t_quantile(1 - (1 - confidence) / 2, n - 1) if comparisons > 1 else t
    ci = (mean - t_adjusted * std / math.sqrt(n), mean + t_adjusted * std / math.sqrt(n))
    return PairedDifference(differences, mean, std, n, n - 1, t_adjusted, ci95, confidence, ci)


def seeds_needed(mean: float, std: float, margin: float, confidence: float = 0.95,
                 limit: int = 100_000) -> tuple[int, str] | None:
    """The fewest seeds whose interval, at the observed mean and spread, would settle the question:
    exclude zero (|mean| > t * std / sqrt(n)), or lie within +-margin (|mean| + t * std / sqrt(n) <=
    margin); with what it would show. None if neither happens below ``limit`` seeds."""
    quantile = 1 - (1 - confidence) / 2
    n = 2
    while n <= limit:
        half_width = t_quantile(quantile, n - 1) * std / math.sqrt(n)
        if abs(mean) > half_width:
            return n, "exclude zero"
        if abs(mean) + half_width <= margin:
            return n, f"show equivalence within ±{margin:g}"
        n = n + 1 if n < 100 else math.ceil(n * 1.05)  # the t quantile is flat by then
    return None


def verdict(difference: PairedDifference, a: str, b: str, margin: float = 0.05, unit: str = "points") -> str:
    """The interval in plain words, one of three answers: ``a`` and ``b`` differ (the interval
    excludes zero); they are equivalent within ``margin`` (the interval lies inside +-margin); or
    this many seeds cannot tell, with how many would."""
    low, high = difference.ci
    level = f"{100 * difference.confidence:.4g}%"
    adjusted = "" if difference.confidence == 0.95 else " (Bonferroni-adjusted for the comparisons made)"
    interval = f"the {level} interval [{low:+.2f}, {high:+.2f}]{adjusted}"
    seeds = f"{difference.n} seeds"
    if difference.excludes_zero:
        better, worse = (a, b) if difference.mean > 0 else (b, a)
        negligible = f", a difference within ±{margin:g} {unit}" if -margin <= low and high <= margin else ""
        return (f"{interval} excludes zero: over {seeds}, {better} scores higher than {worse} by "
                f"{min(abs(low), abs(high)):.2f} to {max(abs(low), abs(high)):.2f} {unit}{negligible}.")
    if -margin <= low and high <= margin:
        return (f"{interval} lies within ±{margin:g} {unit}: over {seeds}, {a} and {b} are equivalent "
                f"within {margin:g} {unit}.")
    needed = seeds_needed(difference.mean, difference.std, margin, difference.confidence)
    more = (f"at the observed mean ({difference.mean:+.2f}) and spread (std {difference.std:.2f}), about "
            f"{needed[0]} seeds would {needed[1]}" if needed else
            "no practical number of seeds would settle it at the observed mean and spread")
    return (f"{interval} contains zero and reaches beyond ±{margin:g} {unit}: {seeds} cannot tell {a} "
            f"from {b}; {more}.")


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
