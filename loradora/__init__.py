"""LoRA and DoRA adapters for PyTorch, and the MNIST experiment that compares them.

The library's functions are imported on first use (PEP 562), not with the package: importing
``loradora.config`` to check a command line must not wait seconds for torch to load.
"""

import importlib

_HOMES = {
    "DoRALinear": "adapters", "LoRALinear": "adapters", "add_adapters": "adapters",
    "count_trainable_parameters": "adapters", "merge_adapters": "adapters", "unmerge_adapters": "adapters",
    "load_adapters": "checkpoints", "save_adapters": "checkpoints", "export_peft": "export",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'loradora' has no attribute {name!r}")
    return getattr(importlib.import_module(f"loradora.{_HOMES[name]}"), name)
