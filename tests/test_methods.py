"""The baselines beside the adapters: which parameters each fine-tuning method trains."""

import pytest
import torch

from loradora.adapters import ADAPTERS, count_trainable_parameters
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


@pytest.mark.parametrize("method,expected", [("lora", 6248), ("dora", 6642)])
def test_adapters_go_through_add_adapters(method, expected):
    tuned = prepare(MLP(), method, rank=4, alpha=8.0, scaling="standard")
    assert count_trainable_parameters(tuned) == expected


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown fine-tuning method"):
        prepare(torch.nn.Linear(2, 2), "prefix")


def test_the_torch_free_names_match_the_implementations():
    assert tuple(ADAPTERS) == ADAPTER_METHODS
