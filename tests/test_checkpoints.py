"""Adapter-only files, model files and the PEFT export, on small models (no MNIST needed)."""

import copy
import json
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import REPO
from helpers import ALPHA, RANK, TOWER_TARGETS, Tower, nontrivial
from loradora.adapters import add_adapters
from loradora.checkpoints import CONFIG_KEY, adapter_settings, load_adapters, load_model, save_adapters, save_model
from loradora.export import export_peft, peft_alpha
from loradora.model import MLP
from peft_oracle import load_with_peft


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
    settings = adapter_settings(reloaded)
    assert settings == adapter_settings(adapted)
    assert settings["scaling"] == "rslora" and settings["targets"] == TOWER_TARGETS
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



def test_adapter_file_missing_a_tensor_is_refused(tmp_path):
    path = tmp_path / "adapter.safetensors"
    save_adapters(add_adapters(MLP(), "lora", RANK, ALPHA), path)
    with safe_open(path, "pt") as file:
        metadata = file.metadata()
    tensors = load_file(path)
    del tensors["layers.4.lora_B"]
    save_file(tensors, path, metadata)
    with pytest.raises(ValueError, match=r"missing \['layers.4.lora_B'\], unexpected \[\]"):
        load_adapters(MLP(), path)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_dropout_is_saved_and_exported_as_lora_dropout(tmp_path, method):
    base, adapted = adapted_tower(method, dropout=0.2)
    save_adapters(adapted, tmp_path / "adapter.safetensors")
    reloaded = load_adapters(copy.deepcopy(base), tmp_path / "adapter.safetensors")
    assert adapter_settings(reloaded)["dropout"] == 0.2
    export_peft(adapted, tmp_path / "peft")
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["lora_dropout"] == 0.2
    peft_model = load_with_peft(copy.deepcopy(base), tmp_path / "peft")
    assert peft_model.peft_config["default"].lora_dropout == 0.2
    x = torch.randn(32, 12)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(x), adapted.eval()(x), atol=1e-5, rtol=0)


def test_an_adapter_file_from_before_dropout_loads_with_none(tmp_path):
    path = tmp_path / "adapter.safetensors"
    base, adapted = adapted_tower("dora")
    save_adapters(adapted, path)
    with safe_open(path, "pt") as file:
        metadata = file.metadata()
    settings = json.loads(metadata[CONFIG_KEY])
    del settings["dropout"]  # as files were written before the setting existed
    save_file(load_file(path), path, {**metadata, CONFIG_KEY: json.dumps(settings)})
    reloaded = load_adapters(copy.deepcopy(base), path)
    assert adapter_settings(reloaded)["dropout"] == 0.0
    x = torch.randn(32, 12)
    assert torch.equal(reloaded(x), adapted(x))


def test_the_file_formats_do_not_depend_on_the_experiment():
    # checkpoints and export are library code (save_adapters, export_peft): they once imported the
    # experiment's run-folder module for its atomic writes.
    code = ("import json, sys; import loradora.checkpoints, loradora.export; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('loradora.'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    imported = set(json.loads(result.stdout))
    assert "loradora.files" in imported
    assert not imported & {"loradora.run_folder", "loradora.results", "loradora.experiment", "loradora.phases"}
