"""Adapter-only files and the PEFT export, on a model that is not our MLP (no MNIST needed)."""

import copy
import json
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file

from helpers import ALPHA, RANK, TOWER_TARGETS, Tower, nontrivial
from loradora.adapters import add_adapters
from loradora.checkpoints import adapter_settings, load_adapters, load_model, save_adapters, save_model
from loradora.export import export_peft, peft_alpha
from loradora.model import MLP


def adapted_tower(method: str, scaling: str = "standard", **options):
    base = Tower()
    adapted = nontrivial(add_adapters(copy.deepcopy(base), method, RANK, ALPHA, targets=TOWER_TARGETS,
                                      scaling=scaling, **options))
    return base, adapted


@pytest.mark.parametrize("method,options", [("lora", {}), ("dora", {"detach_norm": False})])
def test_adapter_file_holds_only_adapters_and_rebuilds_the_model(tmp_path, method, options):
    base, adapted = adapted_tower(method, "rslora", **options)
    save_adapters(adapted, tmp_path / "adapter.safetensors")
    tensors = load_file(tmp_path / "adapter.safetensors")
    per_layer = {"lora_A", "lora_B"} | ({"magnitude"} if method == "dora" else set())
    assert set(tensors) == {f"{layer}.{name}" for layer in TOWER_TARGETS for name in per_layer}

    reloaded = load_adapters(copy.deepcopy(base), tmp_path / "adapter.safetensors")
    assert adapter_settings(reloaded) == adapter_settings(adapted)
    assert adapter_settings(reloaded)["scaling"] == "rslora" and adapter_settings(reloaded)["targets"] == TOWER_TARGETS
    x = torch.randn(32, 12)
    assert torch.equal(reloaded(x), adapted(x))


def test_adapter_file_refuses_a_base_of_another_shape(tmp_path):
    adapted = add_adapters(MLP(), "dora", RANK, ALPHA)
    save_adapters(adapted, tmp_path / "adapter.safetensors")
    with pytest.raises(RuntimeError, match="size mismatch for layers.0.lora_B"):
        load_adapters(MLP(hidden_sizes=(64, 256)), tmp_path / "adapter.safetensors")


def test_model_file_is_a_plain_state_dict(tmp_path):
    model = MLP()
    save_model(model, tmp_path / "model.safetensors")
    with safe_open(tmp_path / "model.safetensors", "pt") as file:
        assert file.metadata() == {"format": "pt"}
    reloaded = load_model(MLP(), tmp_path / "model.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_peft_export_names_the_tensors_as_peft_saves_them(tmp_path, method):
    base, adapted = adapted_tower(method)
    export_peft(adapted, tmp_path / "ours")
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, use_dora=method == "dora", target_modules=TOWER_TARGETS)
    get_peft_model(copy.deepcopy(base), config).save_pretrained(tmp_path / "theirs")
    ours, theirs = (load_file(tmp_path / side / "adapter_model.safetensors") for side in ("ours", "theirs"))
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize("scaling", ["standard", "rslora", "alpha"])
def test_peft_loads_the_export_and_gives_the_same_outputs(tmp_path, method, scaling):
    base, adapted = adapted_tower(method, scaling)
    export_peft(adapted, tmp_path)
    peft_model = load_with_peft(copy.deepcopy(base), tmp_path)
    x = torch.randn(32, 12)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(x), adapted(x), atol=1e-5, rtol=0)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["lora_alpha"], config["use_rslora"]) == peft_alpha(RANK, ALPHA, scaling)


def load_with_peft(base: torch.nn.Module, directory) -> PeftModel:
    """``PeftModel.from_pretrained``, failing on any warning (PEFT warns of missing adapter keys)
    and on any key of the file that the model lacks or the model expects and the file lacks."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = PeftModel.from_pretrained(base, directory)
        again = peft_model.load_adapter(directory, adapter_name="again")
    assert not [str(w.message) for w in caught]
    assert (again.missing_keys, again.unexpected_keys) == ([], [])
    peft_model.set_adapter("default")
    return peft_model.eval()
