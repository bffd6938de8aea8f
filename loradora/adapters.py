"""LoRA and DoRA adapter layers, and the functions that put them on a model and take them off.

Both layers wrap a frozen ``nn.Linear`` whose weight W0 has shape (out_features, in_features).
LoRA (Hu et al. 2021, arXiv 2106.09685) learns a low-rank update s * B @ A; DoRA (Liu et al.
2024, arXiv 2402.09353) re-parametrises the updated weight into a magnitude and a direction:

    W' = m * (W0 + s * B @ A) / ||W0 + s * B @ A||

with the norm taken per output row, so m has one entry per output feature.

A layer can be merged in place for inference (its base weight becomes W') and unmerged back to W0;
``merge_adapters`` turns a whole model back into plain ``nn.Linear`` layers for deployment.
"""

import math
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from loradora.choices import SCALINGS


def lora_scaling(rank: int, alpha: float, scaling: str = "standard") -> float:
    """The factor s in W0 + s * B @ A.

    standard: alpha / rank (LoRA paper section 4.1, PEFT's default), so changing the rank does not
        require retuning the learning rate much.
    rslora:   alpha / sqrt(rank) (Kalajdzievski 2023, arXiv 2312.03732), stable at high rank.
    alpha:    alpha alone, the convention of the from-scratch DoRA article, to reproduce it.
    """
    if scaling == "standard":
        return alpha / rank
    if scaling == "rslora":
        return alpha / math.sqrt(rank)
    if scaling == "alpha":
        return float(alpha)
    raise ValueError(f"unknown scaling {scaling!r}; expected one of {', '.join(SCALINGS)}")


class LoRALinear(nn.Module):
    """y = base(x) + s * B(A(x)), with the base layer frozen.

    A (rank x in) starts Kaiming-uniform as nn.Linear does and B (out x rank) starts at zero, so the
    layer equals its base at init and the first gradient step moves B only (LoRA paper 4.1).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, scaling: str = "standard"):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.scaling_name = rank, alpha, scaling
        self.scaling = lora_scaling(rank, alpha, scaling)
        # A is drawn on the CPU, so one seed gives one init on every device.
        lora_A = nn.init.kaiming_uniform_(torch.empty(rank, base.in_features), a=math.sqrt(5))
        self.lora_A = nn.Parameter(lora_A.to(base.weight))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank).to(base.weight))
        self.merged = False  # True while base.weight holds W' instead of W0

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def merged_weight(self) -> torch.Tensor:
        """W0 + s * B @ A, shape (out, in), in one fused multiply-add."""
        return torch.addmm(self.base.weight, self.lora_B, self.lora_A, alpha=self.scaling)

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """s * (x @ A^T) @ B^T: two thin matmuls through the rank bottleneck, never the (out, in)
        update matrix."""
        return self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)

    @torch.no_grad()
    def merge(self) -> None:
        """Write W' into the base weight, so that a forward pass is one plain matmul.

        While merged the adapter gets no gradients: unmerge before training it again.
        """
        self._expect_merged(False)
        self.base.weight.copy_(self.merged_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore W0 in the base weight, up to float rounding, to train or swap adapters again."""
        self._expect_merged(True)
        self.base.weight.addmm_(self.lora_B, self.lora_A, alpha=-self.scaling)  # W0 = W' - s*B@A
        self.merged = False

    def _expect_merged(self, merged: bool) -> None:
        if self.merged != merged:
            raise RuntimeError(f"adapter is {'already' if self.merged else 'not'} merged")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        return self.base(x) + self.update(x)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling_name} (s={self.scaling:g})"


class DoRALinear(LoRALinear):
    """W' = m * (W0 + s*B@A) / ||W0 + s*B@A||, the norm over each output row (DoRA eq. 5).

    ``magnitude`` (m) has out_features entries and starts as the row norms of W0, so the layer equals
    its base at init. With ``detach_norm`` the norm is treated as a constant in the backward pass
    (DoRA section 4.3): it saves memory and, per the paper, costs no accuracy. The bias is added
    after the re-scaling, as in the paper and PEFT: it is not part of the decomposed weight.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        scaling: str = "standard",
        detach_norm: bool = True,
    ):
        super().__init__(base, rank, alpha, scaling)
        self.detach_norm = detach_norm
        self.magnitude = nn.Parameter(row_norms(base.weight.detach()).clone())
        # ||W0 + s*B@A|| as it was at merge time: unmerging needs it, and it cannot be recomputed from
        # W' alone, whose rows all have norm m. Not saved with the state dict (PEFT caches it the same way).
        self.register_buffer("merge_norm", None, persistent=False)

    def weight_norm(self) -> torch.Tensor:
        """||W0 + s*B@A|| per output row; without autograd when detached (DoRA section 4.3)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_norm):
            return row_norms(super().merged_weight())

    def merged_weight(self) -> torch.Tensor:
        return (self.magnitude / self.weight_norm()).unsqueeze(1) * super().merged_weight()

    @torch.no_grad()
    def merge(self) -> None:
        self._expect_merged(False)
        self.merge_norm = self.weight_norm()
        super().merge()

    @torch.no_grad()
    def unmerge(self) -> None:
        """W0 = W' * ||V|| / m - s*B@A, with ||V|| the norm kept at merge time (m must have no zeros)."""
        self._expect_merged(True)
        self.base.weight.mul_((self.merge_norm / self.magnitude).unsqueeze(1))
        self.base.weight.addmm_(self.lora_B, self.lora_A, alpha=-self.scaling)
        self.merge_norm = None
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        # x @ W'^T = (m / ||V||) * (x @ W0^T + s * (x @ A^T) @ B^T), V = W0 + s*B@A. Scaling the
        # output per row keeps the backward pass low-rank: no (out, in) weight gradient is formed,
        # which made the rebuilt-weight form 1.27x the instructions per step of this one.
        directed = F.linear(x, self.base.weight) + self.update(x)
        scale = self.magnitude / self.weight_norm()
        return directed * scale if self.base.bias is None else torch.addcmul(self.base.bias, directed, scale)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, detach_norm={self.detach_norm}"


def row_norms(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each output row of an (out, in) weight: one entry per output feature.

    Not dim=0: that is the norm over input columns, a bug in one reference implementation.
    """
    return torch.linalg.vector_norm(weight, dim=1)


ADAPTERS = {"lora": LoRALinear, "dora": DoRALinear}  # keys: choices.ADAPTER_METHODS (tested)


def add_adapters(model: nn.Module, method: str, rank: int, alpha: float,
                 targets: str | Sequence[str] | None = None, **options) -> nn.Module:
    """Freeze every parameter of ``model`` and wrap the target ``nn.Linear`` layers in place.

    ``method`` is "lora" or "dora"; ``targets`` picks layers by name as PEFT's ``target_modules``
    does (see ``find_targets``; default: every ``nn.Linear``); ``options`` go to the layer
    (``scaling``, and ``detach_norm`` for DoRA). Returns the model, whose only trainable parameters
    are now the adapters'.
    """
    if method not in ADAPTERS:
        raise ValueError(f"unknown adapter method {method!r}; expected one of {', '.join(ADAPTERS)}")
    if adapter_layers(model):
        raise ValueError("model already has adapters; merge them first (merge_adapters)")
    names = find_targets(model, targets)
    model.requires_grad_(False)
    for name in names:
        _replace(model, name, ADAPTERS[method](model.get_submodule(name), rank, alpha, **options))
    return model


def find_targets(model: nn.Module, targets: str | Sequence[str] | None = None) -> list[str]:
    r"""Names of the modules to wrap, with the rules of PEFT's ``LoraConfig.target_modules``.

    None: every ``nn.Linear``. A string: a regular expression that must match the whole name
    (r"blocks\.\d+\.proj"). A list: names that equal an entry or end with "." + an entry
    (["proj", "head"] selects "blocks.0.proj" and "head"). Every module selected must be an
    ``nn.Linear``, and at least one must be.
    """
    if targets is None:
        return [name for name, module in model.named_modules() if type(module) is nn.Linear]
    if isinstance(targets, str):
        names = [name for name, _ in model.named_modules() if re.fullmatch(targets, name)]
    else:
        names = [name for name, _ in model.named_modules()
                 if any(name == target or name.endswith(f".{target}") for target in targets)]
    if not names:
        raise ValueError(f"targets {targets!r} match no module of the model")
    not_linear = [f"{name} ({type(model.get_submodule(name)).__name__})" for name in names
                  if type(model.get_submodule(name)) is not nn.Linear]
    if not_linear:
        raise ValueError(f"targets {targets!r} match modules that are not nn.Linear: {', '.join(not_linear)}")
    return names


def adapter_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's adapter layers by module name, in model order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


@torch.no_grad()
def merge_adapters(model: nn.Module, unload: bool = True) -> nn.Module:
    """Merge every adapter into its base weight, in place.

    With ``unload`` (the default) each adapter layer is then replaced by its base ``nn.Linear``,
    which now holds the effective weight: the model needs no adapter code to run or to load, and
    predicts what the adapted model predicts. Without it the layers stay, merged, and
    ``unmerge_adapters`` undoes the merge.
    """
    for name, adapter in adapter_layers(model).items():
        if not adapter.merged:
            adapter.merge()
        if unload:
            _replace(model, name, adapter.base)
    return model


def unmerge_adapters(model: nn.Module) -> nn.Module:
    """Restore the base weights of every merged adapter layer, in place, so it can train again."""
    for adapter in adapter_layers(model).values():
        if adapter.merged:
            adapter.unmerge()
    return model


def count_trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child_name = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child_name, new)
