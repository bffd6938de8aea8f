"""Our LoRA and DoRA layers against Hugging Face PEFT's, with the same weights: outputs and gradients.

PEFT is the oracle (requirements-dev.txt): its LoraConfig(use_dora=..., lora_dropout=...) with the
same rank, alpha, scaling and dropout, and our A, B and m copied into its lora_A, lora_B and
lora_magnitude_vector. With dropout in training mode, both draw their masks from the global
generator, one nn.Dropout call per adapter layer in model order, so seeding it alike before each
forward pass gives both the same masks.
"""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from helpers import ALPHA, RANK, TOWER_PATTERNS, TOWER_TARGETS, Tower, nontrivial
from loradora.adapters import adapter_layers, add_adapters, merge_adapters
from loradora.model import MLP

MLP_LINEARS = ["layers.0", "layers.2", "layers.4"]


def twins(base: nn.Module, method: str, scaling: str, targets, peft_targets, dropout: float = 0.0):
    """Our adapted copy of ``base`` (B != 0, m moved) and PEFT's, holding the same adapter values."""
    ours = nontrivial(add_adapters(copy.deepcopy(base), method, RANK, ALPHA, targets=targets, scaling=scaling,
                                   dropout=dropout))
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, use_rslora=scaling == "rslora", use_dora=method == "dora",
                        lora_dropout=dropout, target_modules=peft_targets)
    theirs = get_peft_model(copy.deepcopy(base), config)
    inner = theirs.base_model.model
    assert {name for name, m in inner.named_modules() if isinstance(m, LoraLayer)} == set(adapter_layers(ours))
    with torch.no_grad():
        for name, layer in adapter_layers(ours).items():
            peft_layer = inner.get_submodule(name)
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
            if method == "dora":
                peft_layer.lora_magnitude_vector["default"].weight.copy_(layer.magnitude)
    return ours, theirs


def adapter_gradients(ours: nn.Module, theirs: nn.Module, method: str) -> list[tuple]:
    """(name, our gradient, PEFT's gradient) for every adapter tensor."""
    pairs = []
    for name, layer in adapter_layers(ours).items():
        peft_layer = theirs.base_model.model.get_submodule(name)
        pairs += [(f"{name}.lora_A", layer.lora_A.grad, peft_layer.lora_A["default"].weight.grad),
                  (f"{name}.lora_B", layer.lora_B.grad, peft_layer.lora_B["default"].weight.grad)]
        if method == "dora":
            pairs.append((f"{name}.magnitude", layer.magnitude.grad,
                          peft_layer.lora_magnitude_vector["default"].weight.grad))
    return pairs


def assert_same_outputs_and_gradients(ours, theirs, method, x, seed: int | None = None):
    """Outputs, adapter gradients and input gradients agree in fp32 within 1e-5 of their scale.

    ``seed``: reseed the global generator before each forward pass, so dropout draws the same masks.
    """
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ours, out_theirs = (forward(model, x, seed) for model, x in ((ours, x_ours), (theirs, x_theirs)))
    assert_close_to_scale(out_ours, out_theirs, "outputs")
    weights = torch.randn_like(out_ours)  # a loss whose gradient reaches every output
    (out_ours * weights).sum().backward()
    (out_theirs * weights).sum().backward()
    for name, grad_ours, grad_theirs in adapter_gradients(ours, theirs, method):
        assert grad_ours.abs().max() > 0, f"{name} got no gradient"
        assert_close_to_scale(grad_ours, grad_theirs, f"gradient of {name}")
    assert_close_to_scale(x_ours.grad, x_theirs.grad, "gradient of the input")


def forward(model: nn.Module, x: torch.Tensor, seed: int | None) -> torch.Tensor:
    if seed is not None:
        torch.manual_seed(seed)
    return model(x)


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, what: str, rel: float = 1e-5) -> None:
    """Every entry within ``rel`` times the largest entry of ``expected``: fp32 rounding grows with
    the values' scale, and entries near zero get the same absolute bound as the rest."""
    torch.testing.assert_close(actual, expected, atol=rel * expected.abs().max().item(), rtol=0, msg=what)


@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize("scaling", ["standard", "rslora"])
def test_mlp_matches_peft(method, scaling):
    base = MLP()
    ours, theirs = twins(base, method, scaling, targets=None, peft_targets=MLP_LINEARS)
    x = torch.rand(64, 784)
    assert (ours(x) - base(x)).abs().max() > 1e-2  # the adapters change the model
    assert_same_outputs_and_gradients(ours, theirs, method, x)


@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize("scaling", ["standard", "rslora"])
@pytest.mark.parametrize("targets", TOWER_PATTERNS, ids=["regex", "names"])
def test_nested_model_matches_peft(method, scaling, targets):
    # Nested blocks, layers with and without bias, non-square layers, a subset chosen by name:
    # the same pattern given to both libraries must select the same layers.
    ours, theirs = twins(Tower(), method, scaling, targets=targets, peft_targets=targets)
    assert list(adapter_layers(ours)) == TOWER_TARGETS
    assert_same_outputs_and_gradients(ours, theirs, method, torch.randn(32, 12))


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_merged_weights_match_peft_merge_and_unload(method):
    ours, theirs = twins(Tower(), method, "standard", targets=TOWER_TARGETS, peft_targets=TOWER_TARGETS)
    merged_ours, merged_theirs = merge_adapters(ours).state_dict(), theirs.merge_and_unload().state_dict()
    assert merged_ours.keys() == merged_theirs.keys()
    for key in merged_ours:
        torch.testing.assert_close(merged_ours[key], merged_theirs[key], atol=1e-6, rtol=0, msg=key)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_dropout_in_eval_mode_matches_peft(method):
    ours, theirs = twins(Tower(), method, "standard", TOWER_TARGETS, TOWER_TARGETS, dropout=0.3)
    ours.eval(), theirs.eval()
    assert_same_outputs_and_gradients(ours, theirs, method, torch.randn(32, 12))


@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize("scaling", ["standard", "rslora"])
def test_dropout_in_train_mode_matches_peft_with_the_same_masks(method, scaling):
    # PEFT's DoRA applies dropout to the adapter and to the correction of the base path, not to the
    # base path itself (loradora/adapters.py, dora_forward); so does ours.
    ours, theirs = twins(Tower(), method, scaling, TOWER_TARGETS, TOWER_TARGETS, dropout=0.3)
    ours.train(), theirs.train()
    x = torch.randn(32, 12)
    assert not torch.equal(forward(ours, x, seed=7), forward(ours, x, seed=8))  # dropout is on
    assert_same_outputs_and_gradients(ours, theirs, method, x, seed=7)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_dropout_on_the_mlp_matches_peft(method):
    # Our MLP, with bias everywhere, at a higher rate.
    ours, theirs = twins(MLP(), method, "standard", None, MLP_LINEARS, dropout=0.5)
    ours.train(), theirs.train()
    assert_same_outputs_and_gradients(ours, theirs, method, torch.rand(64, 784), seed=3)


# DoRA's parts alone (adapters.DoRAMagnitude, DoRADirection) are PEFT DoRA adapters with one part
# frozen by hand after get_peft_model: PEFT has no setting for it, but its layers then train the same.
PEFT_PART = {"lora_A": "lora_A", "lora_B": "lora_B", "magnitude": "lora_magnitude_vector"}


@pytest.mark.parametrize("method", ["magnitude", "direction"])
def test_a_part_of_dora_alone_trains_as_peft_dora_with_the_other_part_frozen(method):
    torch.manual_seed(0)
    base = MLP((16, 24)).double()
    torch.manual_seed(1)
    ours = add_adapters(copy.deepcopy(base), method, RANK, ALPHA)
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=RANK, lora_alpha=ALPHA, use_dora=True,
                                                            target_modules=MLP_LINEARS))
    inner = theirs.base_model.model
    with torch.no_grad():
        for name, layer in adapter_layers(ours).items():
            for ours_name, parameter in layer.named_parameters(recurse=False):
                peft_parameter = inner.get_submodule(f"{name}.{PEFT_PART[ours_name]}")["default"].weight
                peft_parameter.copy_(parameter).requires_grad_(parameter.requires_grad)
    generator = torch.Generator().manual_seed(2)
    batches = [(torch.rand(32, 784, generator=generator, dtype=torch.float64),
                torch.randint(0, 10, (32,), generator=generator)) for _ in range(10)]
    for model in (ours, theirs):
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for x, y in batches:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    for name, layer in adapter_layers(ours).items():
        for ours_name, parameter in layer.named_parameters(recurse=False):
            peft_parameter = inner.get_submodule(f"{name}.{PEFT_PART[ours_name]}")["default"].weight
            assert_close_to_scale(parameter.detach(), peft_parameter.detach(), f"{name}.{ours_name}", rel=1e-10)
    x = batches[0][0]
    assert_close_to_scale(ours(x), theirs(x), "outputs after training", rel=1e-10)
    assert (ours(x) - base(x)).abs().max() > 1e-2  # it trained
