"""Trends across the map (issue 30): how DoRA − LoRA moves with rank, fine-tuning set size and the
angle of rotation, each coefficient with an interval over seeds.

The unit is the seed: every cell of a seed adapts the same pretrained base, so a seed's answers
to the map's questions are not independent of one another, and seeds differ in their trends, not
only in their points. So each seed's differences are fitted by least squares on one design (the
same for every seed), and each coefficient gets a t interval over the seeds' fitted values,
mean ± t_{S-1} · sd / √S: for the mean over seeds of each seed's coefficient, on these test
images and these questions. ``pooled_fit`` is the naive analysis, all (seed, question) points
as independent; it is kept to show, in tests/test_trends.py, that it under-covers.

The coding (``design``), so that each coefficient reads in the map's own terms:
  intercept           DoRA − LoRA at the design's centre: mean log2 rank and log2 size, midway between the angles
  log2(rank)          per doubling of rank (log2 rank, centred on the questions' mean)
  log2(n_train)/3     per ×8 of fine-tuning images (log2 size / 3, centred)
  angle               the larger angle against the smaller (coded +0.5 and −0.5)
  log2(rank) × angle  how much more the rank slope is at the larger angle than at the smaller
A column that does not vary over the questions (one angle, one size) is left out, with the
interaction when the angle is. Pure Python and torch, no other dependency.
"""

import math
from dataclasses import asdict, dataclass

import torch

from loradora.stats import t_quantile

# name -> (what a unit of the column is, the verb, the words for a positive and a negative estimate, and for none)
MEANINGS = {
    "intercept": ("at the design's centre", "is", "DoRA ahead", "LoRA ahead", "no difference shown"),
    "log2(rank)": ("per doubling of rank", "changes by", "rising", "falling", "no trend shown"),
    "log2(n_train)/3": ("per ×8 of fine-tuning images", "changes by", "rising", "falling", "no trend shown"),
    "angle": ("{high}° against {low}°", "differs by", "higher at {high}°", "lower at {high}°", "no difference shown"),
    "log2(rank) × angle": ("per doubling of rank, at {high}° against {low}°", "rises more by",
                           "the rank slope larger at {high}°", "the rank slope smaller at {high}°",
                           "no difference in the rank slope shown"),
}


@dataclass
class Design:
    """The design matrix (questions × columns, float64), its columns' names, and the coding used."""
    matrix: torch.Tensor
    names: list[str]
    coding: dict  # the centres and the angles, so each column can be rebuilt and read


def design(questions) -> Design:
    """The design for ``questions``, each with ``rank``, ``n_train`` and ``rotate_degrees``
    (regime_map.Answer has them), coded as the module's docstring says."""
    if not questions:
        raise ValueError("a design needs at least one question")
    log_rank = [math.log2(q.rank) for q in questions]
    log_size = [math.log2(q.n_train) / 3 for q in questions]
    angles = sorted({float(q.rotate_degrees) for q in questions})
    if len(angles) > 2:
        raise ValueError(f"the angle is coded as two levels, got {len(angles)}: {angles}")
    rank_centre, size_centre = sum(log_rank) / len(log_rank), sum(log_size) / len(log_size)
    rank = [x - rank_centre for x in log_rank]
    columns = {"intercept": [1.0] * len(questions), "log2(rank)": rank,
               "log2(n_train)/3": [x - size_centre for x in log_size]}
    if len(angles) == 2:
        # +-0.5: the coefficient is the difference between the angles, the interaction the difference in slopes
        angle = [0.5 if float(q.rotate_degrees) == angles[1] else -0.5 for q in questions]
        columns["angle"] = angle
        columns["log2(rank) × angle"] = [r * a for r, a in zip(rank, angle)]
    # a column that does not vary is the intercept again (one rank also empties the interaction)
    columns = {name: values for name, values in columns.items()
               if name == "intercept" or any(abs(v - values[0]) > 1e-12 for v in values)}
    matrix = torch.tensor(list(zip(*columns.values())), dtype=torch.float64)
    coding = {"log2_rank_centre": rank_centre, "log2_size_over_3_centre": size_centre,
              "angles": {"-0.5": angles[0], "+0.5": angles[-1]} if len(angles) == 2 else angles,
              "columns": list(columns)}
    return Design(matrix, list(columns), coding)


def per_seed_coefficients(d: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Each seed's least-squares coefficients, (..., S, Q) differences on a (Q, p) design -> (..., S, p),
    through the normal equations (one p × p solve shared by every seed and batch)."""
    gram = matrix.T @ matrix
    if torch.linalg.matrix_rank(gram) < gram.shape[0]:
        raise ValueError(f"the design's columns are not independent over these {matrix.shape[0]} questions")
    return d.double() @ matrix @ torch.linalg.inv(gram)


def seed_intervals(d: torch.Tensor, matrix: torch.Tensor, confidence: float = 0.95):
    """(estimate, half-width, std over seeds) of each coefficient, batched: the t interval over the
    S seeds' own coefficients, t_{S-1} · sd / √S."""
    coefficients = per_seed_coefficients(d, matrix)
    n_seeds = coefficients.shape[-2]
    std = coefficients.std(dim=-2)
    half_width = t_quantile(1 - (1 - confidence) / 2, n_seeds - 1) * std / math.sqrt(n_seeds)
    return coefficients.mean(dim=-2), half_width, std


def pooled_intervals(d: torch.Tensor, matrix: torch.Tensor, confidence: float = 0.95):
    """(estimate, half-width) of ordinary least squares over all S·Q points as independent: the
    same estimates (the design is the same for every seed), with the textbook interval
    t_{SQ-p} · sqrt(s² [(X'X)^-1]_jj / S), s² the pooled residual variance."""
    d = d.double()
    n_seeds, n_questions = d.shape[-2:]
    n_columns = matrix.shape[1]
    estimate = per_seed_coefficients(d, matrix).mean(dim=-2)
    residuals = d - (estimate @ matrix.T)[..., None, :]
    df = n_seeds * n_questions - n_columns
    variance = (residuals ** 2).sum(dim=(-2, -1)) / df
    diagonal = torch.linalg.inv(matrix.T @ matrix).diagonal()
    half_width = t_quantile(1 - (1 - confidence) / 2, df) * (variance[..., None] * diagonal / n_seeds).sqrt()
    return estimate, half_width


@dataclass
class Coefficient:
    """One coefficient of the trend fit, with its interval over seeds; ``ci`` is Bonferroni-widened
    to ``confidence`` when several are read at once, and ``reading`` reads ``ci``."""
    name: str
    estimate: float
    ci95: tuple[float, float]
    std: float       # of the seeds' own coefficients
    n: int           # seeds
    df: int
    confidence: float
    ci: tuple[float, float]
    reading: str

    def to_dict(self) -> dict:
        return {**asdict(self), "ci95": list(self.ci95), "ci": list(self.ci)}


@dataclass
class Trends:
    """The coefficients, in the design's order, with the seeds they are over; it iterates and
    indexes as the list of coefficients."""
    coefficients: list[Coefficient]
    seeds: list
    dropped_seeds: list   # seeds missing some question, left out of every coefficient
    coding: dict
    note: str

    def __iter__(self):
        return iter(self.coefficients)

    def __getitem__(self, index):
        return self.coefficients[index]

    def __len__(self):
        return len(self.coefficients)

    def to_dict(self) -> dict:
        """For map.json."""
        return {"coefficients": [c.to_dict() for c in self.coefficients], "seeds": self.seeds,
                "dropped_seeds": self.dropped_seeds, "coding": self.coding, "note": self.note}


def reading(name: str, estimate: float, ci: tuple[float, float], confidence: float, coding: dict) -> str:
    """One line for a coefficient: its meaning, estimate and interval, and which way it points, or
    that the interval contains zero."""
    angles = coding["angles"]
    low_angle, high_angle = (f"{angles['-0.5']:g}", f"{angles['+0.5']:g}") if isinstance(angles, dict) else ("", "")
    meaning, verb, up, down, none = (words.format(low=low_angle, high=high_angle) for words in MEANINGS[name])
    level = "" if confidence == 0.95 else f" ({100 * confidence:.4g}% interval)"
    low, high = ci
    interval = f"[{low:+.2f}, {high:+.2f}]{level}"
    if low <= 0 <= high:
        return f"{meaning}: {none}: the interval {interval} contains zero (estimate {estimate:+.2f} points)"
    return f"{meaning}, DoRA − LoRA {verb} {estimate:+.2f} points {interval}: {up if estimate > 0 else down}"


def complete_seeds(differences) -> tuple[list, list, torch.Tensor]:
    """(seeds kept, seeds dropped, kept × questions tensor) from a dict seed -> list (None or NaN
    where a question is missing) or a seeds × questions tensor (NaN where missing; seeds 0..S-1)."""
    if isinstance(differences, dict):
        seeds = list(differences)
        rows = [[math.nan if x is None else float(x) for x in differences[seed]] for seed in seeds]
        if len({len(row) for row in rows}) > 1:
            raise ValueError("every seed needs one value (or None) per question")
        d = torch.tensor(rows, dtype=torch.float64)
    else:
        d = torch.as_tensor(differences, dtype=torch.float64)
        seeds = list(range(d.shape[0]))
    whole = ~torch.isnan(d).any(dim=1)
    kept = [seed for seed, ok in zip(seeds, whole.tolist()) if ok]
    dropped = [seed for seed, ok in zip(seeds, whole.tolist()) if not ok]
    return kept, dropped, d[whole]


def fit_trends(differences, design: Design, comparisons: int = 1) -> Trends:
    """Each coefficient of ``design`` as the mean over seeds of each seed's least-squares fit to its
    DoRA − LoRA differences (points; a seeds × questions tensor, or a dict seed -> list), with a t
    interval over seeds; with ``comparisons`` > 1 also Bonferroni-widened to 1 - 0.05 / comparisons.
    Only seeds with every question are used (each seed's fit must be on the same design)."""
    seeds, dropped, d = complete_seeds(differences)
    if d.shape[-1] != design.matrix.shape[0]:
        raise ValueError(f"{d.shape[-1]} differences per seed for {design.matrix.shape[0]} questions")
    if len(seeds) < 2:
        raise ValueError(f"an interval over seeds needs at least 2 seeds with every question, got {len(seeds)}")
    estimate, half_95, std = seed_intervals(d, design.matrix)
    confidence = 1 - 0.05 / comparisons
    half = seed_intervals(d, design.matrix, confidence)[1] if comparisons > 1 else half_95
    coefficients = []
    for j, name in enumerate(design.names):
        mean, plain, wide = float(estimate[j]), float(half_95[j]), float(half[j])
        ci = (mean - wide, mean + wide)
        coefficients.append(Coefficient(name, mean, (mean - plain, mean + plain), float(std[j]), len(seeds),
                                        len(seeds) - 1, confidence, ci,
                                        reading(name, mean, ci, confidence, design.coding)))
    note = (f"over {len(seeds)} seeds with every one of the {d.shape[-1]} questions"
            + (f"; left out, missing some question: seeds {', '.join(map(str, dropped))}" if dropped else ""))
    return Trends(coefficients, seeds, dropped, design.coding, note)


def pooled_fit(differences, design: Design) -> list[tuple[str, float, tuple[float, float]]]:
    """The naive analysis: (name, estimate, 95% interval) by least squares over every (seed, question)
    point as if independent. Its interval ignores that seeds differ in their trends; not for reports."""
    _, _, d = complete_seeds(differences)
    estimate, half = pooled_intervals(d, design.matrix)
    return [(name, float(estimate[j]), (float(estimate[j] - half[j]), float(estimate[j] + half[j])))
            for j, name in enumerate(design.names)]
