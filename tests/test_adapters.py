"""The adapter layers against the definitions in DEVELOPERS.md and the DoRA paper (eq. 5, sec. 4.3)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from loradora.adapters import (DoRALinear, LoRALinear, add_adapters, count_trainable_parameters,
                               lora_scaling, merge_adapters)
from loradora.model import MLP

RANK, ALPHA = 3, 7.0  # alpha != rank, so every scaling convention gives s != 1


def nontrivial(module: nn.Module) -> nn.Module:
    """Give every adapter B != 0 and (for DoRA) a magnitude away from its init, as after training."""
    for layer in module.modules():
        if isinstance(layer, LoRALinear):
            nn.init.normal_(layer.lora_B, std=0.1)
        if isinstance(layer, DoRALinear):
            with torch.no_grad():
                layer.magnitude.mul_(1 + 0.1 * torch.randn_like(layer.magnitude))
    return module


def paper_dora(x, weight, bias, A, B, magnitude, s):
    """DoRA eq. 5 written out: W' = m * V / ||V||, V = W0 + s*B@A, norm per output row."""
    V = weight + s * B @ A
    return x @ (magnitude[:, None] * V / V.norm(dim=1, keepdim=True)).T + bias


@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
def test_equals_base_at_init(cls):
    base = nn.Linear(20, 7)
    x = torch.randn(16, 20)
    torch.testing.assert_close(cls(base, RANK, ALPHA)(x), base(x), atol=1e-6, rtol=0)


def test_dora_magnitude_starts_as_row_norms():
    # Regression: one reference took the norm over input columns (dim=0), giving in_features
    # entries. A non-square layer tells the axes apart.
    base = nn.Linear(20, 7)
    layer = DoRALinear(base, RANK, ALPHA)
    assert layer.magnitude.shape == (7,)
    torch.testing.assert_close(layer.magnitude, base.weight.norm(dim=1))


@pytest.mark.parametrize("scaling", ["standard", "rslora", "alpha"])
def test_dora_matches_paper_formula(scaling):
    layer = nontrivial(DoRALinear(nn.Linear(20, 7), RANK, ALPHA, scaling=scaling))
    x = torch.randn(16, 20)
    expected = paper_dora(x, layer.base.weight, layer.base.bias, layer.lora_A, layer.lora_B,
                          layer.magnitude, lora_scaling(RANK, ALPHA, scaling))
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)


def test_lora_matches_definition():
    layer = nontrivial(LoRALinear(nn.Linear(20, 7), RANK, ALPHA))
    x = torch.randn(16, 20)
    expected = layer.base(x) + (ALPHA / RANK) * x @ (layer.lora_B @ layer.lora_A).T
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)


def test_scaling_conventions():
    assert lora_scaling(4, 8.0, "standard") == 2.0
    assert lora_scaling(4, 8.0, "rslora") == 4.0
    assert lora_scaling(4, 8.0, "alpha") == 8.0
    with pytest.raises(ValueError, match="unknown scaling"):
        lora_scaling(4, 8.0, "bogus")


@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize("scaling", ["standard", "rslora"])
def test_merged_equals_unmerged_and_differs_from_base(method, scaling):
    base = MLP()
    adapted = nontrivial(add_adapters(copy.deepcopy(base), method, RANK, ALPHA, scaling=scaling))
    merged = merge_adapters(copy.deepcopy(adapted))
    assert all(type(m) is nn.Linear for m in merged.modules() if isinstance(m, (nn.Linear, LoRALinear)))
    assert all(m.bias is not None for m in merged.modules() if isinstance(m, nn.Linear))
    x = torch.rand(256, 784)
    torch.testing.assert_close(merged(x), adapted(x), atol=1e-5, rtol=0)
    assert (adapted(x) - base(x)).abs().max() > 1e-2  # a real adapter, not the identity


def test_dora_differs_from_lora_with_the_same_adapter():
    lora = nontrivial(LoRALinear(nn.Linear(20, 7), RANK, ALPHA))
    dora = DoRALinear(copy.deepcopy(lora.base), RANK, ALPHA)
    dora.load_state_dict(lora.state_dict(), strict=False)  # same W0, A and B; m at its init
    x = torch.randn(16, 20)
    assert (dora(x) - lora(x)).abs().max() > 1e-3


def test_magnitude_gets_a_gradient_and_changes():
    # Regression: in one framework the magnitude stopped receiving gradients and DoRA became LoRA.
    model = add_adapters(MLP(), "dora", RANK, ALPHA)
    layers = [m for m in model.modules() if isinstance(m, DoRALinear)]
    before = [layer.magnitude.detach().clone() for layer in layers]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    F.cross_entropy(model(torch.rand(32, 784)), torch.randint(0, 10, (32,))).backward()
    for layer in layers:
        assert layer.magnitude.grad is not None and layer.magnitude.grad.abs().sum() > 0
    optimizer.step()
    for layer, old in zip(layers, before):
        assert not torch.equal(layer.magnitude, old)


@pytest.mark.parametrize("detach_norm", [True, False])
def test_detached_norm_changes_gradients_not_outputs(detach_norm):
    torch.manual_seed(1)
    layer = nontrivial(DoRALinear(nn.Linear(20, 7), RANK, ALPHA, detach_norm=detach_norm))
    twin = copy.deepcopy(layer)
    twin.detach_norm = not detach_norm
    x = torch.randn(16, 20)
    torch.testing.assert_close(layer(x), twin(x))
    layer(x).square().sum().backward()
    twin(x).square().sum().backward()
    assert not torch.allclose(layer.lora_A.grad, twin.lora_A.grad)


@pytest.mark.parametrize("method,expected", [("lora", 6248), ("dora", 6642)])
def test_only_adapters_are_trainable(method, expected):
    model = add_adapters(MLP(), method, 4, 8.0)
    trainable = {name.rsplit(".", 1)[-1] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == ({"lora_A", "lora_B", "magnitude"} if method == "dora" else {"lora_A", "lora_B"})
    # rank * (in + out) per layer: 4 * (912 + 384 + 266); DoRA adds 128 + 256 + 10 magnitudes.
    assert count_trainable_parameters(model) == expected


def test_adding_adapters_twice_is_refused():
    model = add_adapters(MLP(), "lora", 4, 8.0)
    with pytest.raises(ValueError, match="already has adapters"):
        add_adapters(model, "dora", 4, 8.0)
