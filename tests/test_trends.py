"""The trend fit over the map (loradora/trends.py): exact on noiseless data, and its intervals over
seeds cover the truth in simulated maps where the naive pooled fit does not."""

import json
import math
from collections import namedtuple

import pytest
import torch

from loradora.trends import design, fit_trends, pooled_fit, pooled_intervals, seed_intervals

Question = namedtuple("Question", "rank n_train rotate_degrees")
RANKS, SIZES, ANGLES = [1, 2, 4, 8, 16, 32, 64], [256, 2048, 16384, 55000], [45, 90]
MAP = [Question(rank, size, angle) for angle in ANGLES for size in SIZES for rank in RANKS]  # 56 questions
NAMES = ["intercept", "log2(rank)", "log2(n_train)/3", "angle", "log2(rank) × angle"]


def test_the_design_is_coded_as_documented():
    matrix = design(MAP).matrix
    assert design(MAP).names == NAMES and matrix.shape == (56, 5)
    row = MAP.index(Question(64, 16384, 90))
    # log2 rank centred on the mean of 0..6 (3); log2(size)/3 centred; 90° is +0.5; the product
    assert matrix[row].tolist() == pytest.approx(
        [1.0, 3.0, 14 / 3 - sum(math.log2(s) / 3 for s in SIZES) / 4, 0.5, 1.5])
    assert design([q for q in MAP if q.rotate_degrees == 45]).names == NAMES[:3]  # one angle: no angle columns


def by_hand(questions) -> torch.Tensor:
    """The five columns as the module's docstring codes them, written out independently of design()."""
    rank_centre = sum(math.log2(q.rank) for q in questions) / len(questions)
    size_centre = sum(math.log2(q.n_train) / 3 for q in questions) / len(questions)
    rows = []
    for q in questions:
        rank, angle = math.log2(q.rank) - rank_centre, 0.5 if q.rotate_degrees == 90 else -0.5
        rows.append([1.0, rank, math.log2(q.n_train) / 3 - size_centre, angle, rank * angle])
    return torch.tensor(rows, dtype=torch.float64)


def test_noiseless_linear_data_give_back_each_seeds_coefficients():
    """With every seed's differences exactly linear in the design (coefficients differing by seed),
    the fit's estimate is the mean of the seeds' coefficients and its std their std, to 1e-9. The
    questions are unbalanced (ranks 32 and 64 only at 45°), so the columns are not orthogonal and a
    column left out would bias the others."""
    questions = [q for q in MAP if not (q.rotate_degrees == 90 and q.rank >= 32)]
    matrix = by_hand(questions)  # the data come from the documented coding, not from design() itself
    generator = torch.Generator().manual_seed(0)
    truth = torch.tensor([0.2, 0.1, -0.3, -0.5, 0.25], dtype=torch.float64)
    coefficients = truth + 0.1 * torch.randn(6, 5, generator=generator, dtype=torch.float64)
    trends = fit_trends(coefficients @ matrix.T, design(questions))
    estimates = {c.name: c.estimate for c in trends}
    expected = dict(zip(NAMES, coefficients.mean(0).tolist()))
    for name in ("log2(rank)", "log2(n_train)/3", "angle", "intercept", "log2(rank) × angle"):
        assert estimates[name] == pytest.approx(expected[name], abs=1e-9), name
    assert [c.std for c in trends] == pytest.approx(coefficients.std(0).tolist(), abs=1e-9)
    assert all(c.n == 6 and c.df == 5 for c in trends)


def test_seeds_missing_a_question_are_left_out_and_named():
    matrix = design(MAP).matrix
    rows = {seed: (0.1 * seed + matrix[:, 1]).tolist() for seed in (3, 4, 5, 6)}
    rows[5][7] = None
    trends = fit_trends(rows, design(MAP))
    assert trends.seeds == [3, 4, 6] and trends.dropped_seeds == [5] and "seeds 5" in trends.note
    assert trends[0].n == 3
    assert trends[1].estimate == pytest.approx(1.0) and trends[1].reading.endswith(": rising")
    json.dumps(trends.to_dict())  # map.json takes it as it is


def test_bonferroni_widens_the_interval_and_the_reading_says_the_level():
    generator = torch.Generator().manual_seed(1)
    d = torch.randn(8, 56, generator=generator, dtype=torch.float64)
    plain, adjusted = fit_trends(d, design(MAP)), fit_trends(d, design(MAP), comparisons=5)
    for one, other in zip(plain, adjusted):
        assert other.ci95 == one.ci95 and other.ci[0] < one.ci[0] and other.ci[1] > one.ci[1]
        assert other.confidence == pytest.approx(0.99) and "99% interval" in other.reading


# ---- coverage, in simulated maps ----

SIMS, SEEDS = 2000, 16
TRUTH = torch.tensor([0.1, 0.05, -0.1, -0.3, 0.04], dtype=torch.float64)
SEED_EFFECTS = torch.tensor([0.3, 0.15, 0.15, 0.3, 0.1], dtype=torch.float64)  # sd of each seed's own coefficient
POINT_NOISE, SHARED_NOISE, TEST_SET_SD = 0.3, 0.2, 0.1


def simulated_maps(matrix: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SIMS maps of SEEDS seeds × 56 questions, and the truth each interval is for.

    d_sq = x_q'(beta + u_s) + c_s + e_sq + g_q: u_s the seed's own coefficients (random slopes),
    c_s a test-image term shared by every cell of a seed, e_sq one per seed and cell, and g_q a
    per-cell term of this test set, the same for every seed and every simulated map. Over seeds the
    interval targets beta + (X'X)^-1 X'g: the mean over seeds of the seeds' coefficients on this
    test set (g belongs to the test set, not to the seeds, so no number of seeds averages it out)."""
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    test_set = TEST_SET_SD * normal(matrix.shape[0])
    coefficients = TRUTH + SEED_EFFECTS * normal(SIMS, SEEDS, len(TRUTH))
    d = (coefficients @ matrix.T + SHARED_NOISE * normal(SIMS, SEEDS, 1)
         + POINT_NOISE * normal(SIMS, SEEDS, matrix.shape[0]) + test_set)
    truth = TRUTH + torch.linalg.solve(matrix.T @ matrix, matrix.T @ test_set)
    return d, truth


def test_the_interval_over_seeds_covers_each_coefficient_and_the_pooled_one_does_not():
    """2,000 simulated maps: a 95% coverage has a Monte Carlo standard error of 0.0049; each
    coefficient's is allowed 3 of them (0.0146). The pooled interval, which takes the 896 points as
    independent, is far too narrow for the slopes, since seeds differ in their slopes."""
    matrix = design(MAP).matrix
    d, truth = simulated_maps(matrix, seed=0)
    estimate, half_width, _ = seed_intervals(d, matrix)
    coverage = ((estimate - truth).abs() <= half_width).double().mean(0)
    tolerance = 3 * math.sqrt(0.95 * 0.05 / SIMS)
    for name, covered in zip(NAMES, coverage.tolist()):
        assert abs(covered - 0.95) <= tolerance, (name, covered)
    pooled_estimate, pooled_half_width = pooled_intervals(d, matrix)
    assert torch.allclose(pooled_estimate, estimate)  # the same estimates, other intervals
    pooled_coverage = ((pooled_estimate - truth).abs() <= pooled_half_width).double().mean(0)
    assert pooled_coverage[NAMES.index("log2(rank)")] < 0.90


def test_pooled_fit_reads_as_the_naive_analysis():
    """pooled_fit, the function form, gives the same estimates as the fit over seeds and a narrower
    interval for the rank slope in a map where seeds differ in their slopes."""
    matrix = design(MAP).matrix
    d = simulated_maps(matrix, seed=1)[0][0]
    over_seeds, pooled = fit_trends(d, design(MAP)), pooled_fit(d, design(MAP))
    assert [name for name, _, _ in pooled] == NAMES
    assert [estimate for _, estimate, _ in pooled] == pytest.approx([c.estimate for c in over_seeds])
    (low, high), (seed_low, seed_high) = pooled[1][2], over_seeds[1].ci95
    assert high - low < (seed_high - seed_low) / 2
