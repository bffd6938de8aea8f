"""LoRA and DoRA adapters for PyTorch, and the MNIST experiment that compares them."""

from loradora.adapters import DoRALinear, LoRALinear, add_adapters, count_trainable_parameters, merge_adapters

__all__ = ["DoRALinear", "LoRALinear", "add_adapters", "count_trainable_parameters", "merge_adapters"]
