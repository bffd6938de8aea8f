"""The adapter layers against their definitions: DoRA eq. 5 (section 4.1) with the detached norm of
section 4.3, and LoRA (its section 4.1), as README.md pins them."""

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import ALPHA, RANK, TOWER_PATTERNS, TOWER_TARGETS, Tower, nontrivial, rounding_bound
from loradora.adapters import (DoRALinear, LoRALinear, add_adapters, adapter_layers, count_trainable_parameters,
                               dora_forward, dora_row_norm, dora_row_norm_expanded, find_targets, lora_forward,
                               lora_scaling, merge_adapters, unmerge_adapters)
from loradora.model import MLP


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
@pytest.mark.parametrize("scale", [1.0, 30.0])  # weights x30: logits in the thousands, rounding to match
def test_merged_equals_unmerged_and_differs_from_base(method, scaling, scale):
    base = MLP()
    with torch.no_grad():
        for parameter in base.parameters():
            parameter.mul_(scale)
    adapted = nontrivial(add_adapters(copy.deepcopy(base), method, RANK, ALPHA, scaling=scaling))
    merged = merge_adapters(copy.deepcopy(adapted))
    assert all(type(m) is nn.Linear for m in merged.modules() if isinstance(m, (nn.Linear, LoRALinear)))
    assert all(m.bias is not None for m in merged.modules() if isinstance(m, nn.Linear))
    x = torch.rand(256, 784)
    assert (merged(x) - adapted(x)).abs().max() <= rounding_bound(adapted(x))
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


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_unmerge_restores_the_base_weights(method):
    model = nontrivial(add_adapters(MLP(), method, RANK, ALPHA))
    layers = adapter_layers(model)
    base_weights = {name: layer.base.weight.detach().clone() for name, layer in layers.items()}
    x = torch.rand(256, 784)
    expected = model(x)
    merge_adapters(model, unload=False)
    assert all(layer.merged for layer in layers.values())
    assert all((layer.base.weight - base_weights[name]).abs().max() > 1e-3 for name, layer in layers.items())
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)
    unmerge_adapters(model)
    for name, layer in layers.items():
        torch.testing.assert_close(layer.base.weight, base_weights[name], atol=1e-6, rtol=0)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)


def test_dora_unmerge_needs_the_norm_from_merge_time():
    # Every row of the merged weight m * V / ||V|| has norm m, whatever ||V|| was: W0 cannot be
    # recovered from W' and m alone, which is why merge() keeps ||V||.
    layer = nontrivial(DoRALinear(nn.Linear(20, 7), RANK, ALPHA))
    base_weight = layer.base.weight.detach().clone()
    layer.merge()
    torch.testing.assert_close(layer.base.weight.norm(dim=1), layer.magnitude, atol=1e-6, rtol=0)
    assert not torch.allclose(layer.merge_norm, layer.magnitude)
    layer.unmerge()
    assert layer.merge_norm is None
    torch.testing.assert_close(layer.base.weight, base_weight, atol=1e-6, rtol=0)


def test_merging_twice_or_unmerging_unmerged_is_refused():
    layer = LoRALinear(nn.Linear(20, 7), RANK, ALPHA)
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()
    layer.merge()
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()


@pytest.mark.parametrize("targets", TOWER_PATTERNS)
def test_targets_follow_peft_target_modules_rules(targets):
    assert find_targets(Tower(), targets) == TOWER_TARGETS
    model = add_adapters(Tower(), "dora", RANK, ALPHA, targets=targets)
    assert list(adapter_layers(model)) == TOWER_TARGETS
    assert type(model.blocks[0].up) is nn.Linear and type(model.blocks[1].gate) is nn.Linear
    assert not any(p.requires_grad for p in model.blocks[0].parameters())


def test_default_targets_are_every_linear_layer():
    assert find_targets(MLP()) == ["layers.0", "layers.2", "layers.4"]
    assert len(find_targets(Tower())) == 2 + 3 * 2


@pytest.mark.parametrize("targets,message", [
    (r"blocks\.\d+", "not nn.Linear: blocks.0 (Block), blocks.1 (Block)"),
    (["norm"], "not nn.Linear: blocks.0.norm (LayerNorm)"),
    (r"up", "match no module"),  # a pattern must match the whole name, as in PEFT
    (["lm_head"], "match no module"),
])
def test_targets_that_are_not_linear_layers_are_refused(targets, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        add_adapters(Tower(), "lora", RANK, ALPHA, targets=targets)


@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
def test_dropout_acts_in_training_only(cls):
    layer = nontrivial(cls(nn.Linear(20, 7), RANK, ALPHA, dropout=0.5))
    without = copy.deepcopy(layer)
    without.dropout = 0.0
    x = torch.randn(64, 20)
    in_training = layer(x)
    assert not torch.equal(in_training, layer(x))  # a fresh mask each pass
    # Dropout moves the output by a fair share of the adapter's contribution, not by rounding.
    assert (in_training - without(x)).abs().max() > 0.1 * (without(x) - layer.base(x)).abs().max()
    layer.eval(), without.eval()
    assert torch.equal(layer(x), without(x))  # eval mode runs the code path of dropout = 0


def test_dora_dropout_form_equals_the_fast_form_when_nothing_is_dropped():
    # dora_forward's dropout form with x_d = x must be the fast form rewritten: same outputs and gradients.
    fast = nontrivial(DoRALinear(nn.Linear(20, 7), RANK, ALPHA, dropout=0.5, detach_norm=False))
    corrected = copy.deepcopy(fast)
    corrected.lora_dropout = nn.Identity()  # training mode takes the dropout form, keeping every input
    fast.eval()
    x = torch.randn(16, 20)
    outputs = [model(x) for model in (fast, corrected)]
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-6 * outputs[0].abs().max().item(), rtol=0)
    for output in outputs:
        output.square().sum().backward()
    for name in ("lora_A", "lora_B", "magnitude"):
        expected = getattr(fast, name).grad
        torch.testing.assert_close(getattr(corrected, name).grad, expected,
                                   atol=1e-5 * expected.abs().max().item(), rtol=0, msg=name)


@pytest.mark.parametrize("dropout", [-0.1, 1.0])
def test_dropout_must_be_below_1(dropout):
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        add_adapters(MLP(), "lora", RANK, ALPHA, dropout=dropout)


def with_zero_rows(layer: nn.Linear, rows=(1, 4)) -> nn.Linear:
    """``layer`` with its weight's ``rows`` all zero, as in the saved model of peft issue 2049."""
    with torch.no_grad():
        layer.weight[list(rows)] = 0
    return layer


@pytest.mark.parametrize("detach_norm", [True, False])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_dora_on_zero_rows_is_finite_and_keeps_them_zero(detach_norm, dropout):
    # Without a floor under ||V||, m / ||V|| is 0 / 0 on those rows: NaN outputs from the first pass.
    base = with_zero_rows(nn.Linear(20, 7))
    layer = DoRALinear(copy.deepcopy(base), RANK, ALPHA, detach_norm=detach_norm, dropout=dropout)
    x = torch.randn(16, 20)
    torch.testing.assert_close(layer.eval()(x), base(x), atol=1e-6, rtol=0)  # the base at init, as ever
    layer.train()
    optimizer = torch.optim.Adam([p for p in layer.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(5):
        x = torch.randn(16, 20, requires_grad=True)
        output = layer(x)
        assert torch.isfinite(output).all()
        optimizer.zero_grad()
        output.square().mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in (layer.lora_A, layer.lora_B, layer.magnitude, x))
        optimizer.step()
    # The zero rows have no direction and m = 0: they stay the base's (bias only); the others trained.
    torch.testing.assert_close(layer(x)[:, [1, 4]], base(x)[:, [1, 4]], atol=1e-6, rtol=0)
    assert (layer(x) - base(x)).abs().max() > 1e-2
    assert torch.equal(layer.magnitude[[1, 4]], torch.zeros(2))


def test_dora_merge_and_unmerge_with_zero_magnitudes():
    # Row 1 and 4 of W0 are zero (m = 0 from init); row 2 is not, but its m was driven to 0. Such rows
    # merge to zeros whatever W0 held there, so unmerge must restore W0 from what merge kept.
    layer = nontrivial(DoRALinear(with_zero_rows(nn.Linear(20, 7)), RANK, ALPHA))
    with torch.no_grad():
        layer.magnitude[2] = 0
    base_weight = layer.base.weight.detach().clone()
    x = torch.randn(16, 20)
    expected = layer(x)
    layer.merge()
    assert torch.isfinite(layer.base.weight).all()
    assert torch.equal(layer.base.weight[[1, 2, 4]], torch.zeros(3, 20))
    torch.testing.assert_close(layer(x), expected, atol=1e-5 * expected.abs().max().item(), rtol=0)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, base_weight, atol=1e-6, rtol=0)
    assert torch.equal(layer.base.weight[2], base_weight[2])  # copied back, not divided by m = 0
    torch.testing.assert_close(layer(x), expected, atol=1e-5 * expected.abs().max().item(), rtol=0)


# The maths is written once (adapters.lora_forward, dora_forward, dora_row_norm): for one layer's
# tensors, and batched over a leading member dimension for a population's.


def member_tensors(n_members: int = 3, n_in: int = 20, n_out: int = 7, rank: int = RANK):
    """Per member: x, W0, b, A, B != 0, m away from ||W0||, and s != 1; float64."""
    generator = torch.Generator().manual_seed(4)
    members = []
    for i in range(n_members):
        weight = torch.randn(n_out, n_in, generator=generator, dtype=torch.float64)
        members.append(dict(x=torch.randn(16, n_in, generator=generator, dtype=torch.float64), weight=weight,
                            bias=torch.randn(n_out, generator=generator, dtype=torch.float64),
                            A=torch.randn(rank, n_in, generator=generator, dtype=torch.float64),
                            B=0.3 * torch.randn(n_out, rank, generator=generator, dtype=torch.float64),
                            magnitude=weight.norm(dim=1) * (1.5 - torch.rand(n_out, generator=generator,
                                                                             dtype=torch.float64)),
                            s=lora_scaling(rank, ALPHA + i)))
    return members


def stacked(members: list[dict]) -> dict:
    """The members' tensors with a leading member dimension, as a population holds them."""
    batched = {key: torch.stack([m[key] for m in members]) for key in ("x", "weight", "A", "B", "magnitude")}
    return {**batched, "bias": torch.stack([m["bias"] for m in members]).unsqueeze(1),
            "s": torch.tensor([m["s"] for m in members], dtype=torch.float64).view(-1, 1, 1)}


def test_dora_forward_is_eq_5_for_one_layer_and_for_each_member():
    members = member_tensors()
    for m in members:
        norm = dora_row_norm(m["weight"], m["A"], m["B"], m["s"], detach=True)
        ours = dora_forward(m["x"], m["weight"], m["bias"], m["A"], m["B"], m["s"], m["magnitude"], norm)
        torch.testing.assert_close(ours, paper_dora(**{k: m[k] for k in ("x", "weight", "bias", "A", "B",
                                                                       "magnitude", "s")}), rtol=1e-12, atol=0)
    p = stacked(members)
    for norm in (dora_row_norm(p["weight"], p["A"], p["B"], p["s"], detach=True),
                 dora_row_norm_expanded(p["weight"], p["weight"].square().sum(dim=-1).unsqueeze(-2), p["A"], p["B"],
                                        p["s"], detach=True)):
        together = dora_forward(p["x"], p["weight"], p["bias"], p["A"], p["B"], p["s"], p["magnitude"], norm)
        for i, m in enumerate(members):
            expected = paper_dora(**{k: m[k] for k in ("x", "weight", "bias", "A", "B", "magnitude", "s")})
            torch.testing.assert_close(together[i], expected, rtol=1e-12, atol=0)


def test_lora_forward_is_the_low_rank_update_for_one_layer_and_for_each_member():
    members = member_tensors()
    p = stacked(members)
    together = lora_forward(p["x"], p["weight"], p["bias"], p["A"], p["B"], p["s"])
    for i, m in enumerate(members):
        expected = m["x"] @ (m["weight"] + m["s"] * m["B"] @ m["A"]).T + m["bias"]
        torch.testing.assert_close(lora_forward(m["x"], m["weight"], m["bias"], m["A"], m["B"], m["s"]), expected,
                                   rtol=1e-12, atol=0)
        torch.testing.assert_close(together[i], expected, rtol=1e-12, atol=0)


def test_the_row_norm_is_over_each_output_row_and_detached_when_asked():
    # Regression: one reference took the norm over input columns (dim=0), giving in_features entries.
    m = member_tensors(1)[0]
    A = m["A"].clone().requires_grad_()
    norm = dora_row_norm(m["weight"], A, m["B"], m["s"], detach=False)
    assert norm.shape == (7,)
    torch.testing.assert_close(norm, (m["weight"] + m["s"] * m["B"] @ A).norm(dim=1), rtol=1e-12, atol=0)
    assert norm.requires_grad and not dora_row_norm(m["weight"], A, m["B"], m["s"], detach=True).requires_grad
