"""The statistics that turn per-seed accuracies into an answer: mean +- std, paired differences
with a t confidence interval (over seeds on this test set; or over seeds and new test images, from
each image's correctness), and the least-squares line of the weight-decomposition analysis.

Pure Python on lists of floats where a handful of seeds is all there is; torch for the seeds x
images matrices of the two-way interval (``two_way_difference``).
"""

import functools
import math
import statistics
from dataclasses import asdict, dataclass

import torch

def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom, through the regularised incomplete
    beta function: P(|T| > |t|) = I_x(df/2, 1/2) with x = df / (df + t^2)."""
    tail = _incomplete_beta(df / 2, 0.5, df / (df + t * t)) / 2
    return 1 - tail if t > 0 else tail


@functools.lru_cache(maxsize=4096)  # the two-way interval asks again and again for the same (p, df)
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


def over_seeds(values: list[float]) -> dict | None:
    """Mean of per-seed values with its 95% t interval; None with fewer than 2."""
    if len(values) < 2:
        return None
    summary = spread(values)
    half_width = t_quantile_975(len(values) - 1) * summary.std / math.sqrt(len(values))
    return {"mean": summary.mean, "ci95": [summary.mean - half_width, summary.mean + half_width], "n": len(values)}


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
    form: str = "on this test set"  # what it holds for: new seeds, but these very test images

    def __post_init__(self):
        if self.ci is None:
            self.ci = self.ci95

    def seeds_needed(self, margin: float) -> tuple[int, str] | None:
        return seeds_needed(self.mean, self.std, margin, self.confidence)

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


POWER = 0.80  # the chance a planned number of seeds should have of deciding, were the observed effect true


def equivalence_rule(confidence: float, margin: float) -> str:
    """The equivalence rule in words, at the level actually used (Bonferroni changes it), so every
    place that calls two methods equivalent names the same test."""
    each = f"{100 * (1 - confidence) / 2:.3g}%"
    return (f"equivalent: two one-sided tests (TOST) at {each} each, i.e. the {100 * confidence:.4g}% "
            f"interval inside ±{margin:g}")


def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def _over_the_sample_std(n: int, std: float, floor: float, confidence: float, chance) -> float:
    """E[chance(half_width, sd)] over the sample std s of n normal differences, by Simpson's rule.

    The decision rules read mean_hat against half_width = t_{n-1} * sqrt(s^2 / n + floor), and for
    normal differences mean_hat ~ N(mean, sd^2) with sd = sqrt(std^2 / n + floor) is independent of s,
    s = std * c / sqrt(n - 1) with c chi-distributed on n - 1 df. So the chance of deciding, given s,
    is a normal probability, and its mean over c is the power: with floor 0 this is the noncentral t's
    power written as one integral (exact, not an approximation; the quadrature's error is ~1e-10).
    ``floor`` is taken as known, as seeds_needed takes it."""
    df = n - 1
    t = t_quantile(1 - (1 - confidence) / 2, df)
    sd = math.sqrt(std ** 2 / n + floor)
    centre = math.sqrt(df)  # c's density is near 0 beyond +-8 of here (its sd is at most 0.76)
    low, high = max(0.0, centre - 8), centre + 8
    steps = 256
    width = (high - low) / steps
    log_norm = (df / 2 - 1) * math.log(2) + math.lgamma(df / 2)
    total = weight_sum = 0.0
    for i in range(steps + 1):
        c = low + i * width
        if c == 0 and df > 1:
            continue  # the density is 0 there
        density = math.exp((df - 1) * math.log(c) - c * c / 2 - log_norm) if c > 0 else math.exp(-log_norm)
        weight = (1 if i in (0, steps) else 4 if i % 2 else 2) * density
        s = std * c / math.sqrt(df)
        total += weight * chance(t * math.sqrt(s * s / n + floor), sd)
        weight_sum += weight
    return total / weight_sum  # normalised by the quadrature's own mass, so its error cancels


def exclusion_power(mean: float, std: float, n: int, confidence: float = 0.95, floor: float = 0.0) -> float:
    """The chance that n seeds' interval excludes zero when the true difference is ``mean`` and the
    seeds' std is ``std``: the two-sided t test's power (the noncentral t's, for floor 0)."""
    def chance(half_width: float, sd: float) -> float:
        if sd == 0:
            return float(abs(mean) > half_width)
        return _normal_cdf((mean - half_width) / sd) + _normal_cdf((-mean - half_width) / sd)
    return _over_the_sample_std(n, std, floor, confidence, chance)


def equivalence_power(mean: float, std: float, n: int, margin: float, confidence: float = 0.95,
                      floor: float = 0.0) -> float:
    """The chance that n seeds' interval lies inside +-margin when the true difference is ``mean``:
    the power of TOST, its two one-sided tests at (1 - confidence) / 2 each (exact over s, as Owen's
    formula, not the 1 - beta1 - beta2 bound, which is poor at a few seeds)."""
    def chance(half_width: float, sd: float) -> float:
        upper, lower = margin - half_width, -margin + half_width  # where mean_hat must lie
        if upper < lower:
            return 0.0
        if sd == 0:
            return float(lower <= mean <= upper)
        return _normal_cdf((upper - mean) / sd) - _normal_cdf((lower - mean) / sd)
    return _over_the_sample_std(n, std, floor, confidence, chance)


def _fewest_seeds(power_at, power: float, limit: int) -> int | None:
    """The fewest n in [2, limit] with power_at(n) >= power, by doubling then bisection (both powers
    rise with n: the interval narrows); None if even ``limit`` seeds fall short."""
    if power_at(2) >= power:
        return 2
    if power_at(limit) < power:
        return None
    low, high = 2, 4  # power_at(low) < power <= power_at(high) once the doubling stops
    while high < limit and power_at(high) < power:
        low, high = high, min(2 * high, limit)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if power_at(middle) >= power else (middle, high)
    return high


def seeds_for_exclusion(mean: float, std: float, confidence: float = 0.95, floor: float = 0.0,
                        power: float = POWER, limit: int = 100_000) -> int | None:
    """The fewest seeds whose interval excludes zero with probability ``power`` at a true difference
    ``mean`` (None: not below ``limit``, or mean 0)."""
    return _fewest_seeds(lambda n: exclusion_power(mean, std, n, confidence, floor), power, limit)


def seeds_for_equivalence(std: float, margin: float, confidence: float = 0.95, floor: float = 0.0,
                          power: float = POWER, true_difference: float = 0.0, limit: int = 100_000) -> int | None:
    """The fewest seeds whose interval lies inside +-margin (TOST) with probability ``power`` at a true
    difference ``true_difference`` (0: the two methods the same). None where no number of seeds
    does: the true difference is too near the margin, or the floor (the variance more seeds do not
    shrink) alone leaves the interval too wide."""
    return _fewest_seeds(lambda n: equivalence_power(true_difference, std, n, margin, confidence, floor),
                         power, limit)


def seeds_needed(mean: float, std: float, margin: float, confidence: float = 0.95, floor: float = 0.0,
                 power: float = POWER, limit: int = 100_000) -> tuple[int, str] | None:
    """The fewest seeds at which the decision rule settles the question with probability ``power``,
    were the observed mean and spread the truth: its interval excludes zero (the two-sided t test's
    power), or lies within +-margin (TOST's power at the observed mean), whichever needs fewer;
    with what it would show. Half-width t_{n-1} * sqrt(std^2 / n + floor); ``floor`` is the variance
    that more seeds do not shrink (for new test images, sigma_b^2 / I: ``TwoWayDifference``). None
    if neither happens below ``limit`` seeds.

    At 50% power (the interval expected at the observed mean just touching zero) the count is
    about half as large. Example: decisive.yaml's shared-rate difference, +0.045 [-0.003, +0.093]
    over 32 seeds (std 0.133), needed ~37 seeds by that count; at 80% power it needs 71
    (the normal approximation ((z_0.975 + z_0.8) * std / mean)^2 says 69)."""
    label = f"with {100 * power:.0f}% power"
    candidates = []
    if (n := seeds_for_exclusion(mean, std, confidence, floor, power, limit)) is not None:
        candidates.append((n, f"exclude zero {label}"))
    if (n := seeds_for_equivalence(std, margin, confidence, floor, power, mean, limit)) is not None:
        candidates.append((n, f"show equivalence within ±{margin:g} {label}"))
    return min(candidates, key=lambda candidate: candidate[0]) if candidates else None


@dataclass
class TwoWayDifference:
    """a - b over seeds *and* test images, from every image's correctness under both methods.

    The paired difference of seed s on image i (100, 0 or -100 points) is modelled as
    d_si = mu + a_s + b_i + e_si: a_s the seed's effect (what the seed-only interval sees), b_i the
    method x image interaction (images one method gets right and the other wrong, consistently
    across seeds), e_si the rest. Image difficulty that both methods share cancels in d. The
    interval for mu holds for new seeds and new test images drawn like these: its variance
    sigma_a^2/S + sigma_b^2/I + sigma_e^2/(S I) is estimated from the two-way ANOVA mean squares as
    (MS_seeds + max(MS_images - MS_error, 0)) / (S I), with Satterthwaite's degrees of freedom, and
    never narrower than the seed-only interval (variance MS_seeds / (S I), t at S - 1 df).
    """
    mean: float
    n: int                     # seeds
    n_images: int
    std: float                 # std over seeds of each seed's mean difference (the seed-only interval's)
    image_std: float           # sigma_b: the method x image interaction, per image
    residual_std: float        # sigma_e
    standard_error: float
    df: int                    # Satterthwaite's, rounded down
    t_critical: float
    ci95: tuple[float, float]
    confidence: float = 0.95
    ci: tuple[float, float] | None = None
    form: str = "for new test images"

    def __post_init__(self):
        if self.ci is None:
            self.ci = self.ci95

    @property
    def floor(self) -> float:
        """sigma_b^2 / I: the variance of the mean that no number of seeds removes (points^2)."""
        return self.image_std ** 2 / self.n_images

    @property
    def excludes_zero(self) -> bool:
        low, high = self.ci
        return low > 0 or high < 0

    def seeds_needed(self, margin: float) -> tuple[int, str] | None:
        return seeds_needed(self.mean, self.std, margin, self.confidence, self.floor)

    def to_dict(self) -> dict:
        return {**asdict(self), "ci95": list(self.ci95), "ci": list(self.ci), "excludes_zero": self.excludes_zero,
                "floor_half_width": 1.96 * math.sqrt(self.floor)}


@dataclass
class TwoWayIntervals:
    """``two_way_intervals`` of a batch of seeds x images matrices: tensors over the batch."""
    mean: torch.Tensor
    seed_half_width: torch.Tensor   # the seed-only (paired t) interval's, t_{S-1}
    half_width: torch.Tensor        # the two-way interval's, at Satterthwaite's df
    df: torch.Tensor
    variance: torch.Tensor          # of the mean, two-way
    mean_squares: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # seeds, images, error


def two_way_intervals(d: torch.Tensor, confidence: float = 0.95) -> TwoWayIntervals:
    """Both intervals of the mean of d (..., S seeds, I images), in float64, batched over the leading
    dimensions (``TwoWayDifference`` says what they mean)."""
    d = d.double()
    n_seeds, n_images = d.shape[-2:]
    if n_seeds < 2 or n_images < 2:
        raise ValueError(f"a two-way interval needs at least 2 seeds and 2 images, got {n_seeds} and {n_images}")
    grand = d.mean(dim=(-2, -1))
    seed_means, image_means = d.mean(dim=-1), d.mean(dim=-2)
    ms_seeds = n_images * ((seed_means - grand[..., None]) ** 2).sum(-1) / (n_seeds - 1)
    ms_images = n_seeds * ((image_means - grand[..., None]) ** 2).sum(-1) / (n_images - 1)
    residuals = d - seed_means[..., :, None] - image_means[..., None, :] + grand[..., None, None]
    ms_error = (residuals ** 2).sum(dim=(-2, -1)) / ((n_seeds - 1) * (n_images - 1))
    interaction = (ms_images - ms_error).clamp(min=0)  # S sigma_b^2; a negative estimate is noise, so 0
    combined = ms_seeds + interaction
    variance = combined / (n_seeds * n_images)
    # Satterthwaite: the combination's degrees of freedom from each mean square's
    has_images = (interaction > 0).double()
    denominator = (ms_seeds ** 2 / (n_seeds - 1) + has_images * (ms_images ** 2 / (n_images - 1)
                   + ms_error ** 2 / ((n_seeds - 1) * (n_images - 1))))
    df = torch.where(denominator > 0, combined ** 2 / denominator.clamp(min=1e-300),
                     torch.full_like(grand, n_seeds - 1.0)).floor().clamp(min=1, max=100_000)
    quantile = 1 - (1 - confidence) / 2
    t = torch.tensor([t_quantile(quantile, int(k)) for k in df.flatten().tolist()], dtype=torch.float64)
    seed_half_width = t_quantile(quantile, n_seeds - 1) * (ms_seeds / (n_seeds * n_images)).sqrt()
    # a small interaction can raise the df past S - 1 by more than it adds variance: the image term
    # must never make the interval narrower than the one that treats the images as fixed
    half_width = torch.maximum(t.reshape(df.shape) * variance.sqrt(), seed_half_width)
    return TwoWayIntervals(grand, seed_half_width, half_width, df, variance,
                           (ms_seeds, ms_images, ms_error))


def two_way_difference(correct_a: torch.Tensor, correct_b: torch.Tensor, comparisons: int = 1) -> TwoWayDifference:
    """a - b in accuracy points from each image's correctness (seeds x images, bool), over seeds and
    new test images; with ``comparisons`` > 1 the Bonferroni interval at 1 - 0.05 / comparisons as ``ci``."""
    if correct_a.shape != correct_b.shape:
        raise ValueError(f"paired correctness must have one shape, got {tuple(correct_a.shape)} and "
                         f"{tuple(correct_b.shape)}")
    d = 100.0 * (correct_a.double() - correct_b.double())
    n_seeds, n_images = d.shape
    confidence = 1 - 0.05 / comparisons
    plain = two_way_intervals(d)
    adjusted = two_way_intervals(d, confidence) if comparisons > 1 else plain
    ms_seeds, ms_images, ms_error = (float(ms) for ms in plain.mean_squares)
    mean, half, half_adjusted = float(plain.mean), float(plain.half_width), float(adjusted.half_width)
    standard_error = math.sqrt(float(plain.variance))
    return TwoWayDifference(
        mean=mean, n=n_seeds, n_images=n_images, std=math.sqrt(ms_seeds / n_images),
        image_std=math.sqrt(max(ms_images - ms_error, 0.0) / n_seeds), residual_std=math.sqrt(ms_error),
        standard_error=standard_error, df=int(plain.df),
        t_critical=half_adjusted / standard_error if standard_error > 0 else 0.0,
        ci95=(mean - half, mean + half), confidence=confidence, ci=(mean - half_adjusted, mean + half_adjusted))


def short_verdict(interval: tuple[float, float], margin: float, a: str = "dora", b: str = "lora") -> str:
    """One word for an interval of a - b: ``a`` or ``b`` (it excludes zero on that side), tie
    (inside +-margin, as ``verdict`` reads it) or undecided."""
    low, high = interval
    if low > 0 or high < 0:
        return a if low > 0 else b
    return "tie" if -margin <= low and high <= margin else "undecided"


def verdict(difference: "PairedDifference | TwoWayDifference", a: str, b: str, margin: float = 0.05,
            unit: str = "points") -> str:
    """The interval in plain words, naming what it holds for (its ``form``), one of three answers:
    ``a`` and ``b`` differ (the interval excludes zero); they are equivalent within ``margin`` (the
    interval lies inside +-margin: TOST, named by ``equivalence_rule``); or this many seeds cannot
    tell, with how many would with 80% power at the observed mean and spread, and where the test
    images alone leave too wide an interval for equivalence, that no number of seeds can."""
    low, high = difference.ci
    level = f"{100 * difference.confidence:.4g}%"
    adjusted = "" if difference.confidence == 0.95 else " (Bonferroni-adjusted for the comparisons made)"
    interval = f"the {level} interval {difference.form} [{low:+.2f}, {high:+.2f}]{adjusted}"
    seeds = f"{difference.n} seeds"
    rule = f"({equivalence_rule(difference.confidence, margin)} {unit})"
    if difference.excludes_zero:
        better, worse = (a, b) if difference.mean > 0 else (b, a)
        negligible = f", a difference within ±{margin:g} {unit} {rule}" if -margin <= low and high <= margin else ""
        return (f"{interval} excludes zero: over {seeds}, {better} scores higher than {worse} by "
                f"{min(abs(low), abs(high)):.2f} to {max(abs(low), abs(high)):.2f} {unit}{negligible}.")
    if -margin <= low and high <= margin:
        return (f"{interval} lies within ±{margin:g} {unit}: over {seeds}, {a} and {b} are equivalent "
                f"within {margin:g} {unit} {difference.form} {rule}.")
    needed = difference.seeds_needed(margin)
    more = (f"at the observed mean ({difference.mean:+.2f}) and spread (std {difference.std:.2f}), about "
            f"{needed[0]} seeds would {needed[1]}" if needed else
            f"no practical number of seeds would settle it with {100 * POWER:.0f}% power at the observed mean and spread")
    floor = getattr(difference, "floor", 0.0)
    at_zero = seeds_for_equivalence(difference.std, margin, difference.confidence, floor)
    if at_zero is not None and (needed is None or "equivalence" not in needed[1]):
        more += f"; were the true difference 0, about {at_zero} seeds would show equivalence with {100 * POWER:.0f}% power"
    if floor > 0 and at_zero is None \
            and seeds_for_equivalence(difference.std, margin, difference.confidence) is not None:
        # the images, not the seeds, forbid it: without the floor some number of seeds would do
        more += (f"; no number of seeds can show equivalence within ±{margin:g} {difference.form} with "
                 f"{100 * POWER:.0f}% power, even were the true difference 0: the {difference.n_images:,} test images alone "
                 f"leave ±{1.96 * math.sqrt(floor):.3f} {unit}")
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
