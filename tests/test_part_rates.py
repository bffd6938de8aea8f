"""Per-part learning rates (issue 30): B at lr * λB (LoRA+, Hayou et al. 2024) and DoRA's magnitude at
lr * λm, A at lr. PEFT is the oracle: with λm = λB its ``create_loraplus_optimizer`` (which gives
lr * ratio to lora_B and to every 1-D trainable parameter, DoRA's magnitude included), and with
λm != λB torch's Adam over PEFT's lora_A, lora_B and lora_magnitude_vector as three groups. Both
in float64, 10 steps on one batch order, every adapter tensor within 1e-10 of its scale. A
population's members, each at its own rate and multipliers, train as each would alone."""

import copy

import pytest
import torch
from peft.optimizers import create_loraplus_optimizer

from helpers import reference_losses
from loradora.adapters import adapter_layers
from loradora.data import Split
from loradora.model import MLP
from loradora.population import Population, train_population
from loradora.training import OneModel
from loradora.variants import PartRates
from test_peft_parity import MLP_LINEARS, assert_close_to_scale, twins
from test_population import BATCH, SEEDS, synthetic, worst_relative
from test_population import members as population_members

LR, STEPS = 3e-3, 10


def batches() -> Split:
    generator = torch.Generator().manual_seed(2)
    return Split(torch.rand(STEPS * 32, 784, generator=generator, dtype=torch.float64),
                 torch.randint(0, 10, (STEPS * 32,), generator=generator))


def train_ours(model, parts: PartRates) -> None:
    """Our step (training.OneModel, the fused Adam by part) on batches 0..9 in order."""
    step, data = OneModel(model, LR, parts=parts), batches()
    for i in range(STEPS):
        step.step(data, torch.arange(32 * i, 32 * (i + 1))[None])


def train_peft(model, optimizer) -> None:
    data = batches()
    for i in range(STEPS):
        x, y = data.images[32 * i:32 * (i + 1)], data.labels[32 * i:32 * (i + 1)]
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def assert_same_adapters(ours, theirs, method) -> None:
    inner = theirs.base_model.model
    for name, layer in adapter_layers(ours).items():
        peft = inner.get_submodule(name)
        pairs = [("lora_A", layer.lora_A, peft.lora_A["default"].weight),
                 ("lora_B", layer.lora_B, peft.lora_B["default"].weight)]
        if method == "dora":
            pairs.append(("magnitude", layer.magnitude, peft.lora_magnitude_vector["default"].weight))
        for what, mine, its in pairs:
            assert_close_to_scale(mine.detach(), its.detach(), f"{name}.{what}", rel=1e-10)


def double_twins(method):
    torch.manual_seed(0)
    base = MLP((16, 24)).double()
    return twins(base, method, "standard", None, MLP_LINEARS)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_equal_multipliers_train_as_peft_loraplus(method):
    ours, theirs = double_twins(method)
    before = {name: p.detach().clone() for name, p in ours.named_parameters() if p.requires_grad}
    train_ours(ours, PartRates(b=16.0, magnitude=16.0))
    train_peft(theirs, create_loraplus_optimizer(theirs, torch.optim.Adam, lr=LR, loraplus_lr_ratio=16.0))
    assert_same_adapters(ours, theirs, method)
    moved = [name for name, p in ours.named_parameters() if p.requires_grad and not torch.equal(p, before[name])]
    assert len(moved) == len(before)  # every adapter tensor trained, so the check above compares motion


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_a_rate_per_part_trains_as_peft_under_three_adam_groups(method):
    ours, theirs = double_twins(method)
    parts = PartRates(b=4.0, magnitude=30.0)
    train_ours(ours, parts)
    groups = {"lora_A": (LR, []), "lora_B": (LR * parts.b, []), "lora_magnitude_vector": (LR * parts.magnitude, [])}
    for name, parameter in theirs.named_parameters():
        if parameter.requires_grad:
            next(group for key, group in groups.items() if key in name)[1].append(parameter)
    train_peft(theirs, torch.optim.Adam([{"params": params, "lr": lr} for lr, params in groups.values() if params]))
    assert_same_adapters(ours, theirs, method)
    # and it is not one rate in disguise: at λ = 1 the weights end elsewhere
    again, _ = double_twins(method)
    train_ours(again, PartRates())
    magnitude_or_b = "magnitude" if method == "dora" else "lora_B"
    assert not torch.allclose(getattr(adapter_layers(again)["layers.0"], magnitude_or_b),
                              getattr(adapter_layers(ours)["layers.0"], magnitude_or_b))


def test_population_members_with_their_own_rates_and_multipliers_train_as_each_alone():
    data = synthetic(8 * BATCH, torch.float64)
    case = ("dora", {"alpha": 8.0}, (1, 4, 8))
    rates = [1e-3, 3e-3, 1e-3]
    parts = [PartRates(4.0, 10.0), PartRates(), PartRates(1.0, 30.0)]
    alone = []
    for model, seed, rate, part in zip(population_members(case, torch.float64), SEEDS, rates, parts):
        groups = {}  # by the parameters' names written out here, not by PartRates.of, which is under test
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                scale = part.b if name.endswith("lora_B") else part.magnitude if name.endswith("magnitude") else 1.0
                groups.setdefault(rate * scale, []).append(parameter)
        alone.append(reference_losses(model, data, seed, epochs=1, lr=rate, batch_size=BATCH,
                                      groups=[{"params": ps, "lr": lr} for lr, ps in groups.items()]))
    runs = train_population(Population(population_members(case, torch.float64)), data, epochs=1, batch_size=BATCH,
                            lr=rates, parts=parts, generators=[torch.Generator().manual_seed(s) for s in SEEDS],
                            log=lambda records: None, log_every=10)
    together = [[loss for record in run.epoch_records for loss in record["batch_losses"]] for run in runs]
    assert worst_relative(alone, together) <= 1e-12


PARTS = ["data.train_subset=768", "data.test_subset=300", "data.validation_size=256", "finetune.epochs=1",
         "experiment.seeds=[2, 3]", "experiment.tuning_seeds=[1]", "experiment.lrs=[1.0e-3, 4.0e-3]",
         "experiment.shared_lr=false", "experiment.b_lr_ratios=[1.0, 4.0]", "experiment.magnitude_lr_ratios=[1.0, 10.0]",
         "analysis.every_n_batches=null"]


def test_the_plan_tunes_the_multipliers_at_the_chosen_rate_then_fine_tunes_with_the_best():
    from loradora.config import load_config
    from loradora.plan import Plan, Stamp

    plan = Plan({"": load_config(None, PARTS)}, Stamp("code", "2.x", "cpu"))
    progress = {job.key: () for job in plan.pretraining()}
    for job in plan.ready(progress):  # the rate grid: 0.004 best for both
        progress[job.key] = [90.0 + (m.lr == 4e-3) for m in job.members]
    parts = plan.ready(progress)
    tried = {(m.variant.name, m.lr, m.parts) for job in parts for m in job.members}
    assert tried == {("lora", 4e-3, PartRates(4.0, 1.0))} | {("dora", 4e-3, PartRates(b, m))
                                                             for b, m in ((1.0, 10.0), (4.0, 1.0), (4.0, 10.0))}
    for job in parts:  # LoRA best with λB = 4; DoRA with λm = 10 and λB = 1
        progress[job.key] = [91.0 + (m.parts in (PartRates(4.0, 1.0), PartRates(1.0, 10.0))) * (m.variant.method == "lora"
                             or m.parts.magnitude == 10.0 and m.parts.b == 1.0) for m in job.members]
    compared = plan.ready(progress)
    assert {(m.variant.name, m.lr, m.parts) for job in compared for m in job.members if m.seed == 2} == {
        ("lora", 4e-3, PartRates(4.0, 1.0)), ("dora", 4e-3, PartRates(1.0, 10.0))}
    table = plan.tuning("", progress).table(load_config(None, PARTS))
    assert table["dora"]["parts"]["magnitude_lr_ratio"] == 10.0 and table["lora"]["parts"]["b_lr_ratio"] == 4.0


def test_a_run_records_the_multipliers_it_chose(tmp_path, mnist_root):
    from conftest import smoke, summary_of

    summary = summary_of(smoke(tmp_path, *PARTS, run_name="parts"))
    for name, pairs in (("lora", 2), ("dora", 4)):
        parts = summary["tuning"][name]["parts"]
        assert len(parts["validation_accuracy"]) == pairs
        best = max(parts["validation_accuracy"].items(), key=lambda item: item[1])[1]
        assert parts["validation_accuracy"][f"λB={parts['b_lr_ratio']:g},λm={parts['magnitude_lr_ratio']:g}"] == best
