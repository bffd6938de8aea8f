"""Which parameters each fine-tuning method trains: the baselines, the adapters and DoRA's parts alone."""

import copy
import itertools

import pytest
import torch

from helpers import ALPHA, RANK
from loradora.adapters import ADAPTERS, adapter_layers, count_trainable_parameters, row_norms
from loradora.choices import ADAPTER_METHODS
from loradora.methods import prepare
from loradora.model import MLP


def test_full_trains_every_weight_of_a_copy():
    base = MLP().requires_grad_(False)
    tuned = prepare(base, "full")
    assert count_trainable_parameters(tuned) == 136_074
    assert tuned.layers[0].weight is not base.layers[0].weight
    assert not any(p.requires_grad for p in base.parameters())  # the pretrained model is left alone


def test_head_trains_only_the_last_linear_layer():
    tuned = prepare(MLP(), "head")
    trainable = {name for name, p in tuned.named_parameters() if p.requires_grad}
    assert trainable == {"layers.4.weight", "layers.4.bias"}
    assert count_trainable_parameters(tuned) == 256 * 10 + 10


@pytest.mark.parametrize("method,expected", [("lora", 6248), ("dora", 6642), ("direction", 6248)])
def test_adapters_go_through_add_adapters(method, expected):
    tuned = prepare(MLP(), method, rank=4, alpha=8.0, scaling="standard")
    assert count_trainable_parameters(tuned) == expected


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown fine-tuning method"):
        prepare(torch.nn.Linear(2, 2), "prefix")


def test_the_torch_free_names_match_the_implementations():
    assert tuple(ADAPTERS) == ADAPTER_METHODS


# ---- DoRA's parts alone (issue 20): the magnitude, or the direction, trained without the other ----


def trained(method: str, steps: int = 20) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the model before, the model after) ``steps`` Adam steps of ``method`` on random labels, at a
    rate high enough that every trainable tensor moves."""
    torch.manual_seed(0)
    base = MLP((16, 24))
    torch.manual_seed(1)
    model = prepare(base, method, rank=RANK, alpha=ALPHA, scaling="standard")
    before = copy.deepcopy(model)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    generator = torch.Generator().manual_seed(2)
    for _ in range(steps):
        x, y = torch.rand(32, 784, generator=generator), torch.randint(0, 10, (32,), generator=generator)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return before, model


def test_magnitude_trains_only_m_and_b_stays_exactly_zero():
    before, after = trained("magnitude")
    trainable = {name for name, p in after.named_parameters() if p.requires_grad}
    assert trainable == {f"layers.{i}.magnitude" for i in (0, 2, 4)}
    assert count_trainable_parameters(prepare(MLP(), "magnitude", rank=4, alpha=8.0)) == 128 + 256 + 10
    for layer_before, layer in zip(adapter_layers(before).values(), adapter_layers(after).values()):
        assert not layer.lora_B.any()  # exactly zero: W' = m * W0 / ||W0||, every row only rescaled
        assert torch.equal(layer.lora_A, layer_before.lora_A)
        assert not torch.equal(layer.magnitude, layer_before.magnitude)  # m moved
        gain = layer.magnitude / row_norms(layer.base.weight)
        torch.testing.assert_close(layer.merged_weight(), gain.unsqueeze(1) * layer.base.weight)


def test_direction_keeps_m_at_the_initial_row_norms_bit_for_bit_while_b_and_a_train():
    before, after = trained("direction")
    for layer_before, layer in zip(adapter_layers(before).values(), adapter_layers(after).values()):
        assert torch.equal(layer.magnitude, row_norms(layer.base.weight))  # bit for bit, after 20 steps
        assert not torch.equal(layer.lora_B, layer_before.lora_B)
        assert not torch.equal(layer.lora_A, layer_before.lora_A)
        # every row of W' keeps its pretrained norm while turning: a weight-normalised LoRA
        torch.testing.assert_close(row_norms(layer.merged_weight()), row_norms(layer.base.weight))
        assert (layer.merged_weight() - layer.base.weight).abs().max() > 1e-3


def test_the_parts_differ_from_dora_and_from_each_other_once_trained():
    # Regression guard for "a DoRA variant that silently trains LoRA": each method trains its own set.
    outputs = {method: trained(method)[1](torch.rand(8, 784, generator=torch.Generator().manual_seed(3)))
               for method in ("dora", "magnitude", "direction", "lora")}
    for first, second in itertools.combinations(outputs, 2):
        assert (outputs[first] - outputs[second]).abs().max() > 1e-3, (first, second)
