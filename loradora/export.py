"""Adapters in Hugging Face PEFT's format, for ``PeftModel.from_pretrained(base_model, directory)``.

    adapter_config.json        a LoraConfig: r, lora_alpha, use_rslora, use_dora, lora_dropout, target_modules
    adapter_model.safetensors  base_model.model.<layer>.lora_A.weight and .lora_B.weight, and for DoRA
                               base_model.model.<layer>.lora_magnitude_vector: the names PEFT saves
                               (its state-dict names without the adapter name "default")

Our lora_A (rank, in), lora_B (out, rank) and magnitude (out,) have the shapes of PEFT's
``lora_A.weight``, ``lora_B.weight`` and ``lora_magnitude_vector``, and PEFT's DoRA takes the norm
per output row and adds the bias after the re-scaling, as ours does; so the tensors go over as
they are. peft is needed to load the export, not to write it.

DoRA's parts alone (``magnitude``, ``direction``: adapters.DoRAMagnitude, DoRADirection) export as
the DoRA adapters they are (use_dora, B = 0 or m = ||W0||), and PEFT predicts with them what we do.
PEFT has no setting that trains one part alone; freezing it by hand after ``get_peft_model`` does
(tests/test_peft_parity.py trains both that way).
"""

from pathlib import Path

import torch
from torch import nn

from loradora.adapters import ADAPTERS, DoRALinear
from loradora.checkpoints import adapter_settings, adapter_state_dict, save_tensors
from loradora.files import write_json

PEFT_PREFIX = "base_model.model."  # PeftModel holds a LoraModel, which holds the user's model
PEFT_NAMES = {"lora_A": "lora_A.weight", "lora_B": "lora_B.weight", "magnitude": "lora_magnitude_vector"}


def export_peft(model: nn.Module, directory: str | Path) -> None:
    """Write the adapters of ``model`` as a PEFT LoRA/DoRA adapter into ``directory``."""
    directory = Path(directory)
    save_tensors(directory / "adapter_model.safetensors", peft_state_dict(model))
    write_json(directory / "adapter_config.json", peft_config(adapter_settings(model)))


def peft_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    state = {}
    for key, tensor in adapter_state_dict(model).items():
        layer, _, parameter = key.rpartition(".")
        state[f"{PEFT_PREFIX}{layer}.{PEFT_NAMES[parameter]}"] = tensor
    return state


def peft_config(settings: dict) -> dict:
    """The LoraConfig that reproduces ``settings`` (from ``adapter_settings``).

    PEFT always detaches the DoRA weight norm (DoRA section 4.3); that changes gradients only, so an
    adapter trained with ``detach_norm: false`` still gives the same outputs there.
    """
    lora_alpha, use_rslora = peft_alpha(settings["rank"], settings["alpha"], settings["scaling"])
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": None,
        "r": settings["rank"],
        "lora_alpha": lora_alpha,
        "use_rslora": use_rslora,
        "use_dora": issubclass(ADAPTERS[settings["method"]], DoRALinear),  # DoRA's parts alone are DoRA adapters
        "target_modules": settings["targets"],  # full module names: PEFT matches a name or a name suffix
        "lora_dropout": settings.get("dropout", 0.0),  # applied as ours is (loradora/adapters.py)
        "bias": "none",
        "fan_in_fan_out": False,  # nn.Linear stores (out, in), as PEFT expects by default
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }


def peft_alpha(rank: int, alpha: float, scaling: str) -> tuple[float, bool]:
    """PEFT's (lora_alpha, use_rslora) that give our s.

    PEFT computes s = lora_alpha / rank, or lora_alpha / sqrt(rank) with use_rslora. It has no
    s = alpha (our "alpha" scaling), so that one is written as lora_alpha = alpha * rank.
    """
    if scaling == "standard":
        return alpha, False
    if scaling == "rslora":
        return alpha, True
    if scaling == "alpha":
        return alpha * rank, False
    raise ValueError(f"unknown scaling {scaling!r}")
