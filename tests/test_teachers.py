"""The teachers' premise, tested exactly: which of DoRA's parts can reach each teacher (issue 20).

On a random MLP, in float64, so "reproduces" means to rounding; no MNIST needed.
"""

import copy

import torch

from loradora.adapters import adapter_layers, add_adapters, row_norms
from loradora.model import MLP
from loradora.teachers import (GAIN_RANGE, TURN_RANK, gain_factors, gain_magnitudes, gain_teacher, linear_layers,
                               turn_teacher, turn_updates)

SEED = 7


def base() -> MLP:
    torch.manual_seed(0)
    return MLP().double()


def images() -> torch.Tensor:
    return torch.rand(256, 784, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def assert_same_logits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12 * expected.abs().max().item())


def test_gain_factors_are_log_uniform_in_their_range_and_fixed_by_the_seed():
    factors = torch.cat(gain_factors(base(), SEED))
    assert len(factors) == 128 + 256 + 10
    assert GAIN_RANGE[0] <= factors.min() and factors.max() <= GAIN_RANGE[1]
    assert abs(factors.log().mean()) < 0.1 and factors.min() < 0.6 and factors.max() > 1.7  # spread over the range
    assert torch.equal(factors, torch.cat(gain_factors(base(), SEED)))
    assert not torch.equal(factors, torch.cat(gain_factors(base(), SEED + 1)))


def test_dora_magnitude_with_b_zero_reproduces_the_gain_teacher():
    model, x = base(), images()
    teacher = gain_teacher(model, SEED)
    assert (teacher(x) - model(x)).abs().max() > 0.1 * model(x).abs().max()  # the teacher is another model
    adapted = add_adapters(copy.deepcopy(model), "magnitude", rank=4, alpha=8.0)
    with torch.no_grad():
        for layer, magnitude in zip(adapter_layers(adapted).values(), gain_magnitudes(model, SEED)):
            assert not layer.lora_B.any()
            layer.magnitude.copy_(magnitude)
    assert_same_logits(adapted(x), teacher(x))
    for layer, teacher_layer in zip(linear_layers(model), linear_layers(teacher)):
        assert torch.equal(layer.bias, teacher_layer.bias)  # biases kept


def test_the_best_rank_4_update_leaves_most_of_the_gain_change():
    # LoRA's best rank-4 change of a layer is the truncated SVD of (diag(c) - I) W0 (Eckart-Young);
    # what it leaves is the rest of that matrix's spectrum, here most of it.
    model = base()
    for factors, layer in zip(gain_factors(model, SEED), linear_layers(model)):
        change = (factors.double() - 1).unsqueeze(1) * layer.weight.detach()
        singular = torch.linalg.svdvals(change)
        residual = singular[4:].square().sum().sqrt() / singular.square().sum().sqrt()
        assert residual > (0.3 if layer.out_features == 10 else 0.8), (layer, residual)


def test_the_turn_keeps_every_row_norm_and_turns_every_layer():
    model = base()
    teacher = turn_teacher(model, SEED)
    for layer, turned in zip(linear_layers(model), linear_layers(teacher)):
        torch.testing.assert_close(row_norms(turned.weight), row_norms(layer.weight), rtol=1e-12, atol=0)
        cosines = torch.nn.functional.cosine_similarity(turned.weight, layer.weight, dim=1)
        assert cosines.mean() < 0.99  # the rows turned
    assert all(torch.linalg.matrix_rank(update) == TURN_RANK for update in turn_updates(model, SEED))


def test_dora_direction_at_rank_2_with_m_kept_reproduces_the_turn_teacher():
    model, x = base(), images()
    teacher = turn_teacher(model, SEED)
    adapted = add_adapters(copy.deepcopy(model), "direction", rank=TURN_RANK, alpha=2.0)  # s = 1
    with torch.no_grad():
        for layer, update in zip(adapter_layers(adapted).values(), turn_updates(model, SEED)):
            left, singular, right = torch.linalg.svd(update, full_matrices=False)
            layer.lora_B.copy_(left[:, :TURN_RANK] * singular[:TURN_RANK])  # s B A = D
            layer.lora_A.copy_(right[:TURN_RANK])
            assert torch.equal(layer.magnitude, row_norms(layer.base.weight))
    assert_same_logits(adapted(x), teacher(x))


def test_gain_recovery_is_one_where_the_gains_are_the_teachers_and_zero_at_the_base():
    """docs/why.md's fourth prediction reads this slope: 1 where every row's gain is the teacher's
    c (DoRA's magnitude set to c * ||W0||, B = 0), 0 where no gain moved (an adapter at init), and
    half-way for gains moved half-way in log."""
    from loradora.teachers import gain_recovery

    torch.manual_seed(0)
    base = MLP((16, 24))
    model = add_adapters(copy.deepcopy(base), "dora", 4, 8.0)
    assert abs(gain_recovery(model, base, seed=5)["slope"]) < 1e-6
    with torch.no_grad():
        for layer, magnitude in zip(adapter_layers(model).values(), gain_magnitudes(base, 5)):
            layer.magnitude.copy_(magnitude)
    recovered = gain_recovery(model, base, seed=5)
    assert abs(recovered["slope"] - 1) < 1e-5 and all(abs(s - 1) < 1e-5 for s in recovered["per_layer"])
    with torch.no_grad():
        for layer, c, base_layer in zip(adapter_layers(model).values(), gain_factors(base, 5), linear_layers(base)):
            layer.magnitude.copy_(c.sqrt() * row_norms(base_layer.weight))
    assert abs(gain_recovery(model, base, seed=5)["slope"] - 0.5) < 1e-5


def test_the_recovery_report_reads_each_runs_slopes_and_pairs_two_runs_by_seed(tmp_path):
    """``python -m loradora.teachers run1 run2``: each phase's mean slope with its t interval over
    seeds, and the second run minus the first paired by seed, whatever order the records came in
    and leaving out a seed that only one run has."""
    import json
    import re

    from loradora.teachers import recovered_gains, report_recovery

    first = {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4}
    second = {4: 0.7, 3: 0.5, 2: 0.4, 1: 0.3, 5: 9.0}  # seed 5: in this run alone
    runs = []
    for name, slopes in (("first", first), ("second", second)):
        run = tmp_path / name
        run.mkdir()
        records = [{"kind": "epoch", "phase": "dora", "seed": 1, "loss": 0.5}]
        records += [{"kind": "gain_recovery", "phase": "dora", "seed": seed, "slope": slope, "per_layer": [slope]}
                    for seed, slope in slopes.items()]
        (run / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
        runs.append(run)
    assert recovered_gains(runs[0]) == {"dora": first}
    lines = report_recovery(runs).splitlines()
    numbers = [[float(x) for x in re.findall(r"[-+]?\d+\.\d+", line.split(": ", 2)[-1])] for line in lines]
    # run 1: mean 0.25, std 0.1291 over 4 seeds, t(3) = 3.1824: half-width 0.2054
    assert numbers[0] == [0.25, 0.045, 0.455]
    # second - first over seeds 1 to 4: 0.2, 0.2, 0.2, 0.3, mean 0.225, std 0.05: half-width 0.0796
    # (paired in the records' order instead, the differences spread far wider)
    assert numbers[2] == [0.225, 0.145, 0.305]
