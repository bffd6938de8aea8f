"""Model and adapter-only checkpoints, as safetensors files written atomically.

A model file is a plain ``state_dict``: ``MLP().load_state_dict(safetensors.torch.load_file(path))``
reads it without this package. An adapter file holds only the adapter tensors (``lora_A``,
``lora_B``, and ``magnitude`` for DoRA), under the names they have in the adapted model's state
dict ("layers.0.lora_A"), and in its metadata the settings that put the same layers back:

    {"format": "pt", "adapter_config": '{"method": "dora", "rank": 4, "alpha": 8.0, "scaling":
     "standard", "dropout": 0.0, "detach_norm": true, "targets": ["layers.0", "layers.2", "layers.4"]}'}

Files written before ``dropout`` existed lack it, and load with the layers' default, 0.0.

``load_adapters`` on the base model the adapters were trained from rebuilds the adapted model
exactly: same tensors, so the same outputs bit for bit.
"""

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import nn

from loradora.adapters import ADAPTERS, DoRALinear, LoRALinear, adapter_layers, add_adapters
from loradora.files import write_atomic

CONFIG_KEY = "adapter_config"  # the safetensors metadata entry that holds the adapter settings


def save_model(model: nn.Module, path: str | Path) -> None:
    save_tensors(path, model.state_dict())


def load_model(model: nn.Module, path: str | Path) -> nn.Module:
    """Load the state dict at ``path`` into ``model`` (every key must match) and return it."""
    model.load_state_dict(load_file(path))
    return model


def save_adapters(model: nn.Module, path: str | Path) -> None:
    """Only the adapters of ``model``, with the settings ``load_adapters`` needs to re-attach them."""
    save_tensors(path, adapter_state_dict(model), {CONFIG_KEY: json.dumps(adapter_settings(model))})


def load_adapters(model: nn.Module, path: str | Path) -> nn.Module:
    """Wrap ``model``, the base the adapters were trained on, in the adapters saved at ``path``."""
    settings = read_adapter_settings(path)
    model = add_adapters(model, **settings)
    tensors = load_file(path)
    expected = adapter_state_dict(model)
    missing, unexpected = sorted(expected.keys() - tensors.keys()), sorted(tensors.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(f"{path} does not fit the model: missing {missing}, unexpected {unexpected}")
    model.load_state_dict(tensors, strict=False)  # strict=False: the file holds no base weights
    return model


def read_adapter_settings(path: str | Path) -> dict:
    with safe_open(path, "pt") as file:
        metadata = file.metadata() or {}
    if CONFIG_KEY not in metadata:
        raise ValueError(f"{path} is not an adapter file: its metadata has no {CONFIG_KEY!r}")
    return json.loads(metadata[CONFIG_KEY])


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors of ``model`` and nothing else, by their names in ``model.state_dict()``."""
    return {f"{name}.{key}": tensor.detach()
            for name, layer in adapter_layers(model).items()
            for key, tensor in layer.named_parameters(recurse=False)}


def adapter_settings(model: nn.Module) -> dict:
    """The keyword arguments of ``add_adapters`` that rebuild the model's adapter layers.

    One set for the whole model, as ``add_adapters`` makes them: layers with different settings
    are an error rather than a file that silently re-attaches them all alike.
    """
    layers = adapter_layers(model)
    if not layers:
        raise ValueError("the model has no adapter layers")
    settings = [layer_settings(layer) for layer in layers.values()]
    if any(s != settings[0] for s in settings):
        raise ValueError(f"the model's adapter layers differ in their settings: {settings}")
    return {**settings[0], "targets": list(layers)}


def layer_settings(layer: LoRALinear) -> dict:
    method = next(name for name, cls in ADAPTERS.items() if type(layer) is cls)
    settings = {"method": method, "rank": layer.rank, "alpha": layer.alpha, "scaling": layer.scaling_name,
                "dropout": layer.dropout}
    if isinstance(layer, DoRALinear):
        settings["detach_norm"] = layer.detach_norm
    return settings


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    """A safetensors file, written atomically; "format": "pt" as PEFT and transformers write it."""
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    write_atomic(Path(path), save(tensors, metadata={"format": "pt", **(metadata or {})}))
