"""LoRA and DoRA adapters for PyTorch, and the MNIST experiment that compares them."""

from loradora.adapters import (DoRALinear, LoRALinear, add_adapters, count_trainable_parameters, merge_adapters,
                               unmerge_adapters)
from loradora.checkpoints import load_adapters, save_adapters
from loradora.export import export_peft

__all__ = ["DoRALinear", "LoRALinear", "add_adapters", "count_trainable_parameters", "export_peft",
           "load_adapters", "merge_adapters", "save_adapters", "unmerge_adapters"]
