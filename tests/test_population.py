"""Population training against training each member alone: the stacked layers must not drift from
LoRALinear/DoRALinear, the one source of truth for the adapter math (synthetic data, no MNIST)."""

import copy
import json
import math

import pytest
import torch
from torch import nn

from conftest import smoke, summary_of
from helpers import reference_losses
from loradora.adapters import DoRALinear, LoRALinear, row_norms
from loradora.data import Split
from loradora.methods import prepare
from loradora.model import MLP
from loradora.cache import pretrain_key
from loradora.config import load_config
from loradora.population import DEFAULT_NORM, Population, PopulationStep, SharedInput, StackedDoRA, train_population
from loradora.variants import population_chunks, rank_buckets
from loradora.training import train_members

SEEDS = (1, 2, 3)
BATCH = 64
# Adam normalises each gradient entry, so at a high lr on random labels it turns rounding-level
# differences into full steps: two exact forms of one DoRA model (output scaled vs weight rebuilt)
# differed by 1e-10 after 200 steps at lr 1e-2, and by 1e-14 at 1e-3 (float64, measured).
LR = 1e-3
HIDDEN = (32, 48)  # narrower than the product's MLP: the same layer types at a quarter of the test's time


def synthetic(n: int, dtype: torch.dtype) -> Split:
    generator = torch.Generator().manual_seed(0)
    return Split(torch.rand(n, 784, generator=generator, dtype=dtype), torch.randint(0, 10, (n,), generator=generator))


def bases(dtype: torch.dtype) -> list[MLP]:
    models = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        models.append(MLP(HIDDEN).to(dtype))
    return models


def member(base: nn.Module, seed: int, method: str, **adapter) -> nn.Module:
    """As dora_example prepares a variant: the seed set just before, so each member has its own init."""
    torch.manual_seed(seed)
    if method == "pretrain":
        return copy.deepcopy(base).requires_grad_(True)
    return prepare(base, method, **adapter)


def losses_alone(model: nn.Module, data: Split, seed: int, epochs: int) -> list[float]:
    """The model trained alone by a plain loop of the tests' own (helpers.reference_losses)."""
    return reference_losses(model, data, seed, epochs, lr=LR, batch_size=BATCH)


def losses_together(models: list[nn.Module], data: Split, epochs: int, norm: str = DEFAULT_NORM, **options):
    runs = train_population(Population(models, norm=norm), data, epochs=epochs, batch_size=BATCH, lr=LR,
                            generators=[torch.Generator().manual_seed(seed) for seed in SEEDS],
                            log=lambda records: None, log_every=10, **options)
    return [[loss for record in run.epoch_records for loss in record["batch_losses"]] for run in runs], runs


def worst_relative(expected: list[list[float]], actual: list[list[float]]) -> float:
    assert [len(losses) for losses in expected] == [len(losses) for losses in actual]
    return max(abs(a - e) / abs(e) for es, acts in zip(expected, actual) for e, a in zip(es, acts))


# (method, adapter options, ranks of the three members): mixed ranks share one zero-padded bucket
CASES = [
    ("pretrain", {}, None),
    ("full", {}, None),
    ("head", {}, None),
    ("lora", {"alpha": 8.0}, (4, 4, 4)),
    ("lora", {"alpha": 8.0, "scaling": "rslora"}, (1, 4, 8)),
    ("dora", {"alpha": 8.0}, (4, 4, 4)),
    ("dora", {"alpha": 8.0}, (1, 4, 8)),
    ("dora", {"alpha": 8.0, "detach_norm": False}, (1, 4, 8)),
    ("magnitude", {"alpha": 8.0}, (4, 4, 4)),  # DoRA's parts alone: their frozen tensors stacked frozen
    ("direction", {"alpha": 8.0}, (1, 4, 8)),
]


def case_id(case) -> str:
    method, options, ranks = case
    return "-".join([method, *(f"{k}={v}" for k, v in options.items()), *(["ranks=" + "+".join(map(str, ranks))]
                                                                          if ranks else [])])


def members(case, dtype: torch.dtype) -> list[nn.Module]:
    method, options, ranks = case
    return [member(base, seed, method, **options, **({"rank": ranks[i]} if ranks else {}))
            for i, (base, seed) in enumerate(zip(bases(dtype), SEEDS))]


@pytest.mark.parametrize("norm", ["direct", "expanded"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_member_trains_as_it_would_alone_in_float64(case, norm):
    if norm == "expanded" and case[0] not in ("dora", "magnitude", "direction"):
        pytest.skip("the norm path is DoRA's only")
    data = synthetic(50 * BATCH, torch.float64)  # 50 steps an epoch, 200 in all
    alone = [losses_alone(model, data, seed, epochs=4) for model, seed in zip(members(case, torch.float64), SEEDS)]
    together, _ = losses_together(members(case, torch.float64), data, epochs=4, norm=norm)
    assert len(alone[0]) == 200
    # 2 rounding steps (3.9e-16) on every CPU tried; with the norm's gradient kept, DoRA is
    # ill-conditioned (see the float32 test) and reached 2.9e-13 with SSE kernels, measured
    assert worst_relative(alone, together) <= (1e-10 if case[1].get("detach_norm") is False else 1e-12)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_member_trains_as_it_would_alone_in_float32(case):
    if case[1].get("detach_norm") is False:
        pytest.skip("ill-conditioned in float32 whoever computes it: two exact forms of one model (output "
                    "scaled, weight rebuilt) differed by 8.6e-6 within 10 steps, measured; held to 1e-10 in float64")
    data = synthetic(10 * BATCH, torch.float32)
    alone = [losses_alone(model, data, seed, epochs=1) for model, seed in zip(members(case, torch.float32), SEEDS)]
    together, _ = losses_together(members(case, torch.float32), data, epochs=1)
    assert worst_relative(alone, together) <= 1e-6


@pytest.mark.parametrize("method", ["dora", "magnitude", "direction"])
def test_members_are_written_back_and_frozen_weights_stay_bit_identical(method):
    data = synthetic(8 * BATCH, torch.float32)
    models = members((method, {"alpha": 8.0}, (1, 4, 8)), torch.float32)
    before = [{name: p.detach().clone() for name, p in model.named_parameters()} for model in models]
    losses_together(models, data, epochs=1)
    for model, initial in zip(models, before):
        for name, p in model.named_parameters():
            if p.requires_grad:
                assert not torch.equal(p, initial[name]), f"{name} did not train"
            else:
                assert torch.equal(p, initial[name]), f"frozen {name} changed"
    assert [model.layers[0].lora_A.shape[0] for model in models] == [1, 4, 8]  # unpadded again


def test_a_diverged_member_stops_while_the_others_go_on():
    data = synthetic(20 * BATCH, torch.float64)
    models = members(("lora", {"alpha": 8.0}, (4, 4, 4)), torch.float64)
    models[1].layers[0].scaling = 1e9  # this member's updates explode
    alone = [losses_alone(copy.deepcopy(models[i]), data, SEEDS[i], epochs=2) for i in (0, 2)]
    frozen_at = {}

    def observe(step, alive):
        frozen_at.setdefault(tuple(alive), copy.deepcopy(models[1].state_dict()))

    together, runs = losses_together(models, data, epochs=2, max_loss=1000.0, observe=observe,
                                     observe_every=1)
    assert runs[1].diverged and "max_loss 1000" in runs[1].diverged and runs[1].epoch_records == []
    assert runs[0].diverged is None and runs[2].diverged is None
    assert worst_relative(alone, [together[0], together[2]]) <= 1e-12
    # after it left, its weights stayed as they were when it diverged
    after = frozen_at[(0, 2)]
    assert all(torch.equal(after[name], value) for name, value in models[1].state_dict().items())


def test_the_expanded_norm_equals_the_direct_norm():
    torch.manual_seed(0)
    adapters = [DoRALinear(nn.Linear(30, 20).double(), rank, 5.0) for rank in (2, 6)]
    for adapter in adapters:
        nn.init.normal_(adapter.lora_B, std=0.3)
    direct, expanded = StackedDoRA(adapters, "direct"), StackedDoRA(adapters, "expanded")
    for i, adapter in enumerate(adapters):
        expected = row_norms(LoRALinear.merged_weight(adapter)).detach()
        torch.testing.assert_close(direct.weight_norm()[i], expected, rtol=1e-13, atol=0)
        torch.testing.assert_close(expanded.weight_norm()[i], expected, rtol=1e-13, atol=0)


def test_same_inputs_give_the_same_bits():
    data = synthetic(8 * BATCH, torch.float32)
    first, _ = losses_together(members(CASES[5], torch.float32), data, epochs=1)
    second, _ = losses_together(members(CASES[5], torch.float32), data, epochs=1)
    assert first == second and all(math.isfinite(loss) for losses in first for loss in losses)


# ---- the pipeline in population mode, on a slice of MNIST ----

def tiny_run(tmp_path, mnist_root, name, *overrides) -> tuple[dict, list[dict]]:
    """dora_example on 512 training images and 200 test images; its summary and metrics records."""
    run = smoke(tmp_path, "data.train_subset=512", "data.test_subset=200", "finetune.epochs=1",
                "experiment.seeds=[1, 2, 3]", "log.every_n_batches=1", *overrides, run_name=name)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return summary_of(run), records


def batch_losses(records: list[dict]) -> dict:
    return {(r["seed"], r["phase"], r["epoch"], r["batch"]): r["loss"] for r in records if r["kind"] == "batch"}


def test_a_population_run_matches_one_model_at_a_time(tmp_path, mnist_root, capsys):
    together, together_records = tiny_run(tmp_path, mnist_root, "auto", "finetune.methods=[lora, dora, head]",
                                          "cache.enabled=false")
    out = capsys.readouterr().out
    alone, alone_records = tiny_run(tmp_path, mnist_root, "one", "finetune.methods=[lora, dora, head]",
                                    "cache.enabled=false", "experiment.population=1")
    assert "3 models at once (seeds 1, 2, 3)" in out and "(mean [min, max] of 3 models)" in out
    assert together["status"] == alone["status"] == "complete"
    assert list(together["methods"]) == list(alone["methods"]) == ["pretrained", "lora", "dora", "head"]
    assert [run["seed"] for run in together["runs"]] == [1, 2, 3]
    # float32: the first two pretraining steps as alone to 1e-5, every other logged loss (the
    # fine-tuning phases start from those bases) to 1e-2. Adam's
    # first update is lr * sign(g), so a gradient element that is rounding noise in both runs can
    # step either way by the full rate, and the runs part from there: on an AVX2 EPYC (2 threads)
    # seed 2's pretraining loss matched to 0 at steps 0 and 1, then 2.6e-5 at step 2 and 2.3e-3 by
    # step 7, while seeds 1 and 3 stayed within 3e-7 (issue 19's session; earlier machines, at
    # most 5.4e-7 everywhere). Members trained at one another's seeds or rates differ from the
    # first step by far more. The float64 tests above hold each member to 1e-12 over 200 steps.
    first, second = batch_losses(together_records), batch_losses(alone_records)
    assert first.keys() == second.keys()
    for key, loss in first.items():
        bound = 1e-5 if key[1] == "pretrained" and key[3] < 2 else 1e-2
        assert loss == pytest.approx(second[key], rel=bound), key
    # train s is the population's time shared out: every member of a population gets the same
    for method in together["methods"]:
        seconds = {run["methods"][method]["train_seconds"] for run in together["runs"]}
        assert len(seconds) == 1, method


def test_in_a_population_a_diverging_method_stops_and_the_others_run(tmp_path, mnist_root):
    summary, records = tiny_run(tmp_path, mnist_root, "r", "lora.alpha=1.0e6", "dora.alpha=1.0e6")
    assert summary["status"] == "complete"
    for run in summary["runs"]:
        assert run["methods"]["lora"]["diverged"] and "max_loss" in run["methods"]["lora"]["error"]
        assert not run["methods"]["dora"]["diverged"] and run["methods"]["dora"]["n_test"] == 200
    assert sum(r["kind"] == "diverged" for r in records) == 3


def test_a_population_base_is_cached_under_its_population(tmp_path, mnist_root, capsys):
    first, first_records = tiny_run(tmp_path, mnist_root, "first", "finetune.methods=[lora]")
    assert "reusing" not in capsys.readouterr().out
    again, again_records = tiny_run(tmp_path, mnist_root, "again", "finetune.methods=[lora]")
    assert capsys.readouterr().out.count("reusing pretrained base") == 3
    assert [run["methods"]["pretrained"]["test_accuracy"] for run in again["runs"]] == \
        [run["methods"]["pretrained"]["test_accuracy"] for run in first["runs"]]
    assert batch_losses(again_records) == batch_losses(first_records)  # a hit is bit-identical
    tiny_run(tmp_path, mnist_root, "two", "finetune.methods=[lora]", "experiment.seeds=[1, 2]")
    assert "reusing" not in capsys.readouterr().out  # another population: other bits, another key
    key = pretrain_key(load_config(), 1, torch.device("cpu"))
    assert pretrain_key(load_config(), 1, torch.device("cpu"), [1]) == key
    assert pretrain_key(load_config(), 1, torch.device("cpu"), [1, 2]) != key
    assert pretrain_key(load_config(), 1, torch.device("cpu"), [1, 2]) != \
        pretrain_key(load_config(), 1, torch.device("cpu"), [1, 2, 3])


def test_buckets_and_chunks():
    assert rank_buckets([64, 1, 2, 4, 8, 16, 32], [784, 128, 256, 10]) == [[1, 2, 4, 8, 16, 32], [64]]
    assert rank_buckets([4], [784, 128, 256, 10]) == [[4]]
    assert [len(c) for c in population_chunks(list(range(40)), "auto", "cpu")] == [20, 20]
    assert [len(c) for c in population_chunks(list(range(5)), 2, "cpu")] == [2, 2, 1]
    assert population_chunks([1, 2, 3], "auto", "cpu") == [[1, 2, 3]]


def test_a_rate_per_member_trains_each_as_adam_at_its_rate_alone():
    data = synthetic(50 * BATCH, torch.float64)
    rates = [1e-3, 3e-3, 5e-4]
    case = ("dora", {"alpha": 8.0}, (1, 4, 8))
    alone = [reference_losses(model, data, seed, epochs=4, lr=rate, batch_size=BATCH)
             for model, seed, rate in zip(members(case, torch.float64), SEEDS, rates)]
    runs = train_population(Population(members(case, torch.float64)), data, epochs=4, batch_size=BATCH, lr=rates,
                            generators=[torch.Generator().manual_seed(seed) for seed in SEEDS],
                            log=lambda records: None, log_every=10)
    together = [[loss for record in run.epoch_records for loss in record["batch_losses"]] for run in runs]
    assert worst_relative(alone, together) <= 1e-12


class FixedMask(nn.Module):
    """Dropout with a given keep-mask, so a population and its members can be fed the same masks."""

    def __init__(self, mask: torch.Tensor, p: float):
        super().__init__()
        self.mask, self.p = mask, p

    def forward(self, x):
        return x * self.mask / (1 - self.p)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_dropout_gives_each_member_its_own_mask_and_the_adapters_math(method):
    p, batch = 0.3, 16
    models = members((method, {"alpha": 8.0, "dropout": p}, (2, 4, 8)), torch.float64)
    for model in models:
        for layer in model.layers[::2]:
            nn.init.normal_(layer.lora_B, std=0.1)  # B != 0, or the adapter path would not show
    x = torch.rand(len(models), batch, 784, dtype=torch.float64)
    # three copies of one member, fed one input: with nn.Dropout they differ by their masks alone
    clones = Population([copy.deepcopy(models[0]) for _ in range(3)])
    same_input = x[:1].expand(3, -1, -1)
    outputs = clones.train()(same_input)
    assert not torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[1], outputs[2])
    evaluated = clones.eval()(same_input)
    assert torch.equal(evaluated[0], evaluated[1])
    population = Population(models).train()
    # with given masks, each member computes what its own LoRALinear/DoRALinear computes
    generator = torch.Generator().manual_seed(0)
    for k, stacked in enumerate(population.layers[::2]):
        masks = (torch.rand(len(models), batch, stacked.base.weight.shape[1], generator=generator) > p).double()
        stacked.lora_dropout = FixedMask(masks, p)
        for i, model in enumerate(models):
            model.layers[2 * k].lora_dropout = FixedMask(masks[i], p)
    population(x).sum().backward()
    stacked = population.layers[0]
    for i, model in enumerate(models):
        model.train()
        model(x[i]).sum().backward()
        rank = model.layers[0].rank
        expected = model.layers[0].lora_B.grad.t()
        torch.testing.assert_close(stacked.lora_B.grad[i, :rank], expected, rtol=1e-12,
                                   atol=1e-12 * expected.abs().max().item())  # entries near zero cancel
        if method == "dora":
            expected = model.layers[0].magnitude.grad
            torch.testing.assert_close(stacked.magnitude.grad[i], expected, rtol=1e-12,
                                       atol=1e-12 * expected.abs().max().item())


def test_when_every_member_diverges_the_population_stops():
    data = synthetic(4 * BATCH, torch.float64)
    models = members(("lora", {"alpha": 8.0}, (4, 4, 4)), torch.float64)
    for model in models:
        model.layers[0].scaling = 1e9
    _, runs = losses_together(models, data, epochs=2, max_loss=1000.0)
    assert all(run.diverged and run.epoch_records == [] for run in runs)


# A rate grid: every rate of a seed adapts that seed's base and draws that seed's batch order, so
# the members of a seed share the first layer's frozen product and their batch (SharedInput). The
# seeds are interleaved, so groups are not contiguous, and the ranks differ within a group.
GRID = [(seed, rate, rank) for rate, rank in ((1e-3, 4), (3e-3, 1), (5e-4, 8)) for seed in SEEDS[:2]]


def grid_members(method: str, dtype: torch.dtype) -> list[nn.Module]:
    base_of = dict(zip(SEEDS, bases(dtype)))
    return [member(base_of[seed], 100 * seed + i, method, **({} if method == "head" else {"alpha": 8.0, "rank": rank}))
            for i, (seed, rate, rank) in enumerate(GRID)]


def grid_together(models: list[nn.Module], data: Split, epochs: int) -> tuple[list[list[float]], PopulationStep]:
    seeds = [seed for seed, _, _ in GRID]
    step = PopulationStep(Population(models), [rate for _, rate, _ in GRID], orders=seeds)
    runs = train_members(step, data, epochs=epochs, batch_size=BATCH,
                         generators=[torch.Generator().manual_seed(seed) for seed in seeds],
                         log=lambda records: None, log_every=10)
    return [[loss for record in run.epoch_records for loss in record["batch_losses"]] for run in runs], step


@pytest.mark.parametrize("method", ["lora", "dora", "direction", "head"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_members_of_a_seed_share_its_first_layer_and_each_trains_as_it_would_alone(method, dtype):
    steps = 200 if dtype == torch.float64 else 10
    data = synthetic(steps // 4 * BATCH if dtype == torch.float64 else steps * BATCH, dtype)
    epochs = 4 if dtype == torch.float64 else 1
    alone = [reference_losses(model, data, seed, epochs=epochs, lr=rate, batch_size=BATCH)
             for model, (seed, rate, _) in zip(grid_members(method, dtype), GRID)]
    together, step = grid_together(grid_members(method, dtype), data, epochs)
    assert step.shared is not None and len(step.shared) == 2  # two seeds: two batches and two base products
    assert len(alone[0]) == steps
    assert worst_relative(alone, together) <= (1e-12 if dtype == torch.float64 else 1e-6)


def test_members_share_only_a_batch_order_and_a_base_that_are_both_the_same():
    models = [member(base, seed, "lora", alpha=8.0, rank=4) for base, seed in zip(bases(torch.float64), SEEDS)]
    assert SharedInput.find(Population(models), orders=[7, 7, 7]) is None  # one order, three bases
    same_base = [member(bases(torch.float64)[0], seed, "lora", alpha=8.0, rank=4) for seed in SEEDS]
    assert SharedInput.find(Population(same_base), orders=[1, 2, 3]) is None  # one base, three orders
    shared = SharedInput.find(Population(same_base), orders=[1, 2, 1])
    assert shared.group.tolist() == [0, 1, 0] and shared.slot.tolist() == [0, 0, 1]
    assert SharedInput.find(Population([member(bases(torch.float64)[0], s, "full") for s in SEEDS]),
                            orders=[1, 1, 1]) is None  # a first layer that trains is never shared


# Labels per seed (finetune.task gain or turn: each seed's own teacher labels the images): each
# member must train on its seed's labels, alone, in a population, sharing a first layer, and after
# another member was dropped.


def taught_synthetic(n: int, dtype: torch.dtype) -> Split:
    plain = synthetic(n, dtype)
    generator = torch.Generator().manual_seed(5)
    labels = torch.stack([torch.randint(0, 10, (n,), generator=generator) for _ in SEEDS])
    return Split(plain.images, labels, SEEDS)


@pytest.mark.parametrize("method", ["lora", "magnitude"])
def test_with_labels_per_seed_every_member_trains_on_its_own_seeds_labels(method):
    data = taught_synthetic(50 * BATCH, torch.float64)
    case = (method, {"alpha": 8.0}, (4, 4, 4))
    alone = [losses_alone(model, data.of_seed(seed), seed, epochs=4)
             for model, seed in zip(members(case, torch.float64), SEEDS)]
    assert alone[0] != losses_alone(members(case, torch.float64)[0], data.of_seed(SEEDS[1]), SEEDS[0], epochs=1)[:50]
    runs = train_population(Population(members(case, torch.float64)), data, epochs=4, batch_size=BATCH, lr=LR,
                            generators=[torch.Generator().manual_seed(seed) for seed in SEEDS],
                            log=lambda records: None, log_every=10, orders=list(SEEDS))
    together = [[loss for record in run.epoch_records for loss in record["batch_losses"]] for run in runs]
    assert worst_relative(alone, together) <= 1e-12


def test_with_labels_per_seed_members_sharing_a_first_layer_keep_their_seeds_labels():
    # two rates of seed 1, then two of seed 2: the second group's leader is member 2, not 1
    grid = [(1, 1e-3), (1, 3e-3), (2, 1e-3), (2, 3e-3)]
    base_of = dict(zip(SEEDS, bases(torch.float64)))

    def grid_models():
        return [member(base_of[seed], 100 * seed + i, "lora", alpha=8.0, rank=4) for i, (seed, _) in enumerate(grid)]

    data = taught_synthetic(50 * BATCH, torch.float64)
    alone = [reference_losses(model, data.of_seed(seed), seed, epochs=4, lr=rate, batch_size=BATCH)
             for model, (seed, rate) in zip(grid_models(), grid)]
    seeds = [seed for seed, _ in grid]
    step = PopulationStep(Population(grid_models()), [rate for _, rate in grid], orders=seeds)
    runs = train_members(step, data, epochs=4, batch_size=BATCH, log=lambda records: None, log_every=10,
                         generators=[torch.Generator().manual_seed(seed) for seed in seeds])
    assert step.shared.leaders.tolist() == [0, 2]
    together = [[loss for record in run.epoch_records for loss in record["batch_losses"]] for run in runs]
    assert worst_relative(alone, together) <= 1e-12


def test_with_labels_per_seed_a_member_dropped_leaves_the_others_their_labels():
    data = taught_synthetic(8 * BATCH, torch.float64)
    models = members(("lora", {"alpha": 8.0}, (4, 4, 4)), torch.float64)
    models[0].layers[0].scaling = 1e9  # seed 1 diverges at its first logged batch and is dropped
    alone = [losses_alone(model, data.of_seed(seed), seed, epochs=2)
             for model, seed in zip(members(("lora", {"alpha": 8.0}, (4, 4, 4)), torch.float64)[1:], SEEDS[1:])]
    runs = train_population(Population(models), data, epochs=2, batch_size=BATCH, lr=LR,
                            generators=[torch.Generator().manual_seed(seed) for seed in SEEDS],
                            log=lambda records: None, log_every=2, max_loss=1000.0, orders=list(SEEDS))
    assert runs[0].diverged and not runs[1].diverged
    together = [[loss for record in run.epoch_records for loss in record["batch_losses"]] for run in runs[1:]]
    assert worst_relative(alone, together) <= 1e-12


def test_labels_per_seed_need_each_members_seed():
    data = taught_synthetic(4 * BATCH, torch.float32)
    with pytest.raises(ValueError, match="differ by seed"):
        train_population(Population(members(("lora", {"alpha": 8.0}, (4, 4, 4)), torch.float32)), data,
                         epochs=1, batch_size=BATCH, lr=LR, log=lambda records: None, log_every=10,
                         generators=[torch.Generator().manual_seed(seed) for seed in SEEDS])
