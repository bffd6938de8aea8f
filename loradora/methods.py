"""The fine-tuning methods: the two adapters, and the two baselines they are measured against.

    lora, dora  the base frozen, every nn.Linear wrapped in an adapter (loradora/adapters.py)
    full        every weight trainable: what the adapters approximate with fewer parameters
    head        only the last nn.Linear trainable: the cheapest adaptation, a floor for the others

Each starts from a deep copy, so the pretrained model is never touched.
"""

import copy

from torch import nn

from loradora.adapters import ADAPTERS, add_adapters
from loradora.choices import METHODS


def prepare(model: nn.Module, method: str, **adapter_options) -> nn.Module:
    """A copy of ``model`` whose trainable parameters are those ``method`` fine-tunes.

    ``adapter_options`` (rank, alpha, scaling, dropout, detach_norm) apply to lora and dora only.
    """
    tuned = copy.deepcopy(model)
    if method in ADAPTERS:
        return add_adapters(tuned, method, **adapter_options)
    if method == "full":
        return tuned.requires_grad_(True)
    if method == "head":
        *_, last = (module for module in tuned.modules() if type(module) is nn.Linear)
        tuned.requires_grad_(False)
        last.requires_grad_(True)
        return tuned
    raise ValueError(f"unknown fine-tuning method {method!r}; expected one of {', '.join(METHODS)}")
