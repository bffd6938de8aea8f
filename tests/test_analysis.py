"""The weight-decomposition analysis (DoRA paper sec. 3.2) on weights built by hand."""

import pytest
import torch
from torch import nn

from loradora.adapters import DoRALinear, add_adapters
from loradora.analysis import (DecompositionPoint, DecompositionTracker, decomposition_change,
                               effective_weights, fit_decomposition, unavailable_reason)
from loradora.experiment import pool_decomposition
from loradora.methods import prepare
from loradora.model import MLP
from helpers import seed_results


def test_dm_and_dd_on_hand_built_rows():
    initial = torch.tensor([[3.0, 4.0],    # norm 5
                            [1.0, 0.0],    # norm 1
                            [0.0, 2.0]])   # norm 2
    current = torch.tensor([[6.0, 8.0],    # norm 10, same direction: |dm| 5, 1 - cos 0
                            [0.0, 2.0],    # norm 2, turned 90 degrees: |dm| 1, 1 - cos 1
                            [0.0, -2.0]])  # norm 2, reversed: |dm| 0, 1 - cos 2
    dM, dD = decomposition_change(initial, current)
    assert dM == pytest.approx((5 + 1 + 0) / 3)
    assert dD == pytest.approx((0 + 1 + 2) / 3)


def test_norms_are_per_output_row_not_per_column():
    # Scaling row 0 changes one magnitude of two; by columns it would change both.
    initial = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    current = torch.tensor([[2.0, 2.0], [1.0, -1.0]])
    dM, dD = decomposition_change(initial, current)
    assert dM == pytest.approx(2**0.5 / 2) and dD == pytest.approx(0.0, abs=1e-12)


def test_unchanged_weights_give_zero():
    weight = torch.randn(7, 5)
    assert decomposition_change(weight, weight.clone()) == pytest.approx((0.0, 0.0), abs=1e-12)
    with pytest.raises(ValueError, match="shape"):
        decomposition_change(weight, weight.T)


def test_dora_magnitude_alone_changes_dm_not_dd():
    layer = DoRALinear(nn.Linear(6, 4), rank=2, alpha=2.0)
    tracker = DecompositionTracker(nn.Sequential(layer))
    with torch.no_grad():
        layer.magnitude.mul_(torch.tensor([2.0, 1.0, 1.0, 3.0]))  # rows 0 and 3 grow by 1x and 2x their norm
    tracker(step=10)
    (point,) = tracker.points
    norms = layer.base.weight.norm(dim=1)
    assert (point.step, point.layer) == (10, "0")
    assert point.dM == pytest.approx(((norms[0] + 2 * norms[3]) / 4).item(), rel=1e-5)
    assert point.dD == pytest.approx(0.0, abs=1e-6)


def test_effective_weight_of_each_method():
    base = MLP()
    lora = add_adapters(prepare(base, "full"), "lora", 2, 4.0)
    assert set(effective_weights(lora)) == {"layers.0", "layers.2", "layers.4"}  # not the frozen .base
    torch.testing.assert_close(effective_weights(lora)["layers.4"], base.layers[4].weight)  # B = 0 at init
    with torch.no_grad():
        lora.layers[4].lora_B.fill_(0.1)
    torch.testing.assert_close(effective_weights(lora)["layers.4"], lora.layers[4].merged_weight())
    assert set(effective_weights(prepare(base, "full"))) == {"layers.0", "layers.2", "layers.4"}
    assert set(effective_weights(prepare(base, "head"))) == {"layers.4"}  # only what fine-tuning can move


def test_tracker_records_every_layer_once_per_step():
    model = prepare(MLP(), "full")
    tracker = DecompositionTracker(model)
    with torch.no_grad():
        model.layers[2].weight.mul_(1.5)  # magnitudes up by half, directions unchanged
    tracker(5)
    tracker(5)  # the last step may repeat the last periodic one
    assert [(p.step, p.layer) for p in tracker.points] == [(5, "layers.0"), (5, "layers.2"), (5, "layers.4")]
    moved = tracker.points[1]
    assert moved.dM == pytest.approx(0.5 * model.layers[2].weight.norm(dim=1).mean().item() / 1.5, rel=1e-5)
    assert (tracker.points[0].dM, tracker.points[0].dD) == pytest.approx((0.0, 0.0), abs=1e-12)  # untouched
    assert tracker.shapes == {"layers.0": (128, 784), "layers.2": (256, 128), "layers.4": (10, 256)}


def test_fit_of_dm_on_dd():
    points = [DecompositionPoint(step, "l", dM=1.0 - 0.3 * dD, dD=dD)
              for step, dD in enumerate([0.1, 0.2, 0.4, 0.5, 0.7])]
    line = fit_decomposition(points)
    assert line.slope == pytest.approx(-0.3) and line.correlation == pytest.approx(-1.0)
    assert fit_decomposition(points[:1]) is None


def test_no_line_from_too_few_points_or_one_step():
    # Issue 10: a slope on fewer than 5 points, or across the seeds' final points only, is not reported.
    four = [DecompositionPoint(step, "l", dM=0.1 * step, dD=0.01 * step) for step in range(1, 5)]
    assert fit_decomposition(four) is None and unavailable_reason(four) == "4 points, fewer than 5"
    finals = [DecompositionPoint(100, f"l{seed}", dM=0.1 * seed, dD=0.01 * seed) for seed in range(6)]
    assert fit_decomposition(finals) is None and "one step" in unavailable_reason(finals)


def test_per_method_slopes_carry_an_interval_over_seeds():
    def run(seed):
        points = [{"step": step, "layer": "l", "dM": (1 + seed / 10) * 0.01 * step, "dD": 0.01 * step}
                  for step in range(1, 7)]
        return seed_results(seed, {}, {"dora": {"slope": 1 + seed / 10, "points": points}})
    pooled, unavailable = pool_decomposition([run(seed) for seed in range(4)])
    over = pooled["dora"]["slope_over_seeds"]
    assert unavailable == {} and over["n"] == 4 and over["mean"] == pytest.approx(1.15)
    assert over["ci95"][0] < 1.15 < over["ci95"][1]
    short = [seed_results(seed, {}, {"dora": {"slope": None, "points": run(seed).decomposition["dora"]["points"][-1:]}})
             for seed in range(6)]
    assert pool_decomposition(short) == ({}, {"dora": "every point is from one step (set "
                                                      "analysis.every_n_batches below the run's steps)"})
