"""The training and evaluation loops, on synthetic data (no MNIST needed)."""

import copy
import math

import pytest
import torch

from loradora.adapters import add_adapters
from loradora.data import Split, shuffled_batches
from loradora.model import MLP
from loradora.training import EVAL_BATCH_SIZE, Diverged, evaluate, train


def synthetic(n: int = 512) -> Split:
    return Split(torch.rand(n, 784), torch.randint(0, 10, (n,)))


def fine_tune(model, data, seed=0, epochs=1):
    records = []
    epoch_records = train(model, data, epochs=epochs, batch_size=64, lr=1e-2,
                          generator=torch.Generator().manual_seed(seed), log=records.append, log_every=4)
    return epoch_records, records


def test_only_adapter_parameters_change():
    model = add_adapters(MLP(), "dora", 4, 8.0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    fine_tune(model, synthetic())
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, before[name]), f"adapter parameter {name} did not train"
        else:
            assert torch.equal(p, before[name]), f"frozen parameter {name} changed"


def test_dora_and_lora_diverge_when_trained_alike():
    # Regression: one reference's "DoRA" model silently trained LoRA layers, so the two agreed.
    data, base = synthetic(), MLP()
    tuned = {}
    for method in ("lora", "dora"):
        torch.manual_seed(1)  # the same adapter init and batch order for both
        tuned[method] = add_adapters(copy.deepcopy(base), method, 4, 8.0)
        fine_tune(tuned[method], data)
    x = data.images[:64]
    assert (tuned["dora"](x) - tuned["lora"](x)).abs().max() > 1e-3


def test_records_and_epoch_statistics_cover_every_batch():
    data = synthetic(300)  # 5 batches of 64: the last one short
    epoch_records, records = fine_tune(MLP(), data, epochs=2)
    batches = [r for r in records if r["kind"] == "batch"]
    assert [(r["epoch"], r["batch"]) for r in batches] == [(1, 0), (1, 4), (2, 0), (2, 4)]
    assert all(r["batches"] == 5 for r in batches)
    assert [r["n_train"] for r in epoch_records] == [300, 300]
    assert all(0 <= r["train_accuracy"] <= 100 and r["seconds"] > 0 for r in epoch_records)


@pytest.mark.parametrize("poison,message", [
    (lambda data: Split(data.images, data.labels), "max_loss 1000"),      # lr 1e3: huge but finite losses
    (lambda data: Split(data.images * math.nan, data.labels), "nan"),     # a NaN anywhere
])
def test_a_diverging_loss_stops_training_with_where_it_happened(poison, message):
    model = MLP()
    with pytest.raises(Diverged, match=rf"a batch loss reached .*{message}.* by epoch 1, batch \d+"):
        train(model, poison(synthetic()), epochs=2, batch_size=64, lr=1e3, generator=torch.Generator().manual_seed(0),
              log=lambda record: None, log_every=1, max_loss=1000.0)


def test_batches_are_a_seeded_permutation():
    first = shuffled_batches(300, 64, torch.Generator().manual_seed(5), "cpu")
    again = shuffled_batches(300, 64, torch.Generator().manual_seed(5), "cpu")
    assert [len(b) for b in first] == [64, 64, 64, 64, 44]
    assert torch.equal(torch.cat(first).sort().values, torch.arange(300))
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_evaluate_counts_every_image():
    # Regression: one reference reported "test accuracy" on a single batch of 64 images.
    data = synthetic(10_000)
    model = MLP()
    accuracy = evaluate(model, data)
    # in evaluation's batch shape: a matmul's float32 sums may depend on its shape (measured: 6e-8 on AVX2)
    logits = torch.cat([model(chunk) for chunk in data.images.split(EVAL_BATCH_SIZE)])
    expected = (logits.argmax(dim=1) == data.labels).sum().item()
    assert (accuracy.correct, accuracy.total) == (expected, 10_000)
    assert accuracy.percent == 100 * expected / 10_000


def test_the_fused_loop_gives_the_plain_loops_losses():
    # The loop's speed choices (fused Adam, tensors accumulated on the device, no per-step sync)
    # must not change what is learned: compare with the plainest loop and the default Adam.
    data, base = synthetic(640), add_adapters(MLP(), "dora", 4, 8.0)
    _, records = fine_tune(copy.deepcopy(base), data)  # log_every=4: losses of batches 0, 4, 8
    plain = copy.deepcopy(base)
    optimizer = torch.optim.Adam([p for p in plain.parameters() if p.requires_grad], lr=1e-2,
                                 foreach=False, fused=False)
    plain_losses = []
    for indices in shuffled_batches(len(data), 64, torch.Generator().manual_seed(0), "cpu"):
        loss = torch.nn.functional.cross_entropy(plain(data.images[indices]), data.labels[indices])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        plain_losses.append(loss.item())
    logged = [r["loss"] for r in records if r["kind"] == "batch"]
    assert logged == pytest.approx(plain_losses[::4], rel=1e-4)
