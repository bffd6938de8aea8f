"""precision: bf16 runs a step's matrix products in bfloat16 and keeps everything else as in fp32:
float32 parameters, gradients and Adam state (the master weights), a float32 loss, and DoRA's
row norm in float32 (synthetic data, no MNIST, except the one run through dora_example)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import smoke, summary_of
from loradora.adapters import dora_row_norm, dora_row_norm_expanded
from loradora.cache import pretrain_key
from loradora.config import ConfigError, load_config
from loradora.data import Split, shuffled_batches
from loradora.methods import prepare
from loradora.model import MLP
from loradora.population import member_step

BATCH = 64  # no other dimension of the step has this size: it marks the products that see the batch
HIDDEN = (32, 48)
PRODUCTS = {"mm", "bmm", "addmm", "baddbmm"}


class Products(TorchDispatchMode):
    """The dtypes of every matrix product's operands, and whether one of them holds the batch."""

    def __init__(self):
        super().__init__()
        self.seen = []  # (op name, batch-sized, operand dtypes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in PRODUCTS:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            self.seen.append((name, any(BATCH in t.shape for t in tensors), {t.dtype for t in tensors}))
        return func(*args, **(kwargs or {}))


def models(method: str, n: int) -> list[torch.nn.Module]:
    made = []
    for seed in range(1, n + 1):
        torch.manual_seed(seed)
        base = MLP(HIDDEN)
        made.append(base if method == "pretrain" else prepare(base, method, rank=4, alpha=8.0))
    return made


def synthetic(n: int = 4 * BATCH) -> Split:
    generator = torch.Generator().manual_seed(0)
    return Split(torch.rand(n, 784, generator=generator), torch.randint(0, 10, (n,), generator=generator))


def batch_indices(data: Split, n: int) -> torch.Tensor:
    return torch.stack([shuffled_batches(len(data), BATCH, torch.Generator().manual_seed(i), data.images.device)[0]
                        for i in range(n)])


@pytest.mark.parametrize("n", [1, 3], ids=["one model", "population"])
@pytest.mark.parametrize("method", ["pretrain", "lora", "dora"])
def test_bf16_runs_the_batch_products_in_bfloat16_and_keeps_float32_master_weights(method, n):
    data = synthetic()
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        members = models(method, n)
        step = member_step(members, [1e-3] * n, precision=precision)
        with Products() as products:
            losses, logits, labels = step.step(data, batch_indices(data, n))
        batch_products = [(name, dtypes) for name, batched, dtypes in products.seen if batched]
        # the forward and weight-gradient products of the 3 layers and the input gradients of the
        # last 2 see the batch (and an adapter's products beside them): all of them in `dtype`
        assert len(batch_products) >= 3 + 3 + 2, products.seen
        assert all(dtypes == {dtype} for _, dtypes in batch_products), (precision, batch_products)
        assert losses.dtype == torch.float32 and torch.isfinite(losses).all()
        state = step.optimizer.state
        for p in step.optimizer.parameters:
            assert p.dtype == p.grad.dtype == torch.float32
            assert all(v.dtype == torch.float32 for v in state[p].values() if v.dim() > 0)
        step.write_back()
        assert all(p.dtype == torch.float32 for model in members for p in model.parameters())


@pytest.mark.parametrize("norm", [dora_row_norm, dora_row_norm_expanded])
def test_doras_row_norm_stays_float32_under_bf16(norm):
    """Rounded to bfloat16, the norm of W0 + s*B@A is off by about 1e-3 of itself (the output is off
    the base's at init by as much); in float32, by about 1e-7."""
    generator = torch.Generator().manual_seed(0)
    weight, A, B = (torch.randn(*shape, generator=generator) for shape in ((48, 784), (4, 784), (48, 4)))

    def arguments(dtype):
        w, a, b = (t.to(dtype) for t in (weight, A, B))
        if norm is dora_row_norm_expanded:
            return w, w.square().sum(dim=1, keepdim=True).mT, a, b, 2.0, True
        return w, a, b, 2.0, True

    expected = norm(*arguments(torch.float64))  # float64: no autocast touches it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_bf16 = norm(*arguments(torch.float32))
    assert under_bf16.dtype == torch.float32
    assert ((under_bf16 - expected).abs() / expected).max() < 1e-5


def test_bf16_training_follows_fp32_training():
    """Thirty steps of DoRA at each precision from the same start: the losses agree to bfloat16's
    rounding, a few parts in a thousand, and so are not the same computation."""
    data = synthetic(30 * BATCH)
    losses = {}
    for precision in ("fp32", "bf16"):
        step = member_step(models("dora", 3), [1e-3] * 3, precision=precision)
        generators = [torch.Generator().manual_seed(i) for i in range(3)]
        orders = list(zip(*(shuffled_batches(len(data), BATCH, g, data.images.device) for g in generators)))
        losses[precision] = torch.stack([step.step(data, torch.stack(order))[0] for order in orders])
    relative = ((losses["bf16"] - losses["fp32"]).abs() / losses["fp32"]).max().item()
    assert 0 < relative < 2e-2


def test_precision_is_checked_and_is_part_of_the_pretrained_cache_key():
    with pytest.raises(ConfigError, match="precision: got 'fp16', allowed: one of fp32, bf16"):
        load_config(overrides=["precision=fp16"])
    cpu = torch.device("cpu")
    assert pretrain_key(load_config(overrides=["precision=bf16"]), 1, cpu) != pretrain_key(load_config(), 1, cpu)


def test_a_bf16_run_completes_and_says_its_precision(tmp_path, mnist_root, capsys):
    run = smoke(tmp_path, "precision=bf16", "finetune.methods=[lora, dora]", "experiment.seeds=[1, 2]",
                "cache.enabled=false", "finetune.epochs=1")
    summary = summary_of(run)
    assert summary["status"] == "complete" and summary["config"]["precision"] == "bf16"
    assert "Trained with precision bf16" in capsys.readouterr().out
    for method in ("lora", "dora"):
        assert all(r["methods"][method]["test_accuracy"] > 50 for r in summary["runs"]), method
