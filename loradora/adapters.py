"""LoRA and DoRA adapter layers, and the functions that put them on a model and take them off.

Both layers wrap a frozen ``nn.Linear`` whose weight W0 has shape (out_features, in_features).
LoRA (Hu et al. 2021, arXiv 2106.09685) learns a low-rank update s * B @ A; DoRA (Liu et al.
2024, arXiv 2402.09353) re-parametrises the updated weight into a magnitude and a direction:

    W' = m * (W0 + s * B @ A) / ||W0 + s * B @ A||

with the norm taken per output row, so m has one entry per output feature.

Both take ``dropout`` as PEFT's ``lora_dropout``: in training, the adapter path sees dropout(x),
the frozen base path sees x (for DoRA with a correction, see ``DoRALinear.forward_dropout``).

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

# DoRA's floor under ||V||, which is 0 only for an all-zero row: torch's F.normalize divides by
# max(||v||, 1e-12) for the same reason. Rows of a trained weight have norms many orders above it.
NORM_EPS = 1e-12


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
    """y = base(x) + s * B(A(dropout(x))), with the base layer frozen.

    A (rank x in) starts Kaiming-uniform as nn.Linear does and B (out x rank) starts at zero, so the
    layer equals its base at init and the first gradient step moves B only (LoRA paper 4.1).
    ``dropout`` (PEFT's ``lora_dropout``) acts in training mode only, on the adapter's input alone.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, scaling: str = "standard",
                 dropout: float = 0.0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if not 0.0 <= dropout < 1.0:  # p = 1 would zero the adapter's input and divide by 1 - p = 0
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.scaling_name, self.dropout = rank, alpha, scaling, dropout
        self.scaling = lora_scaling(rank, alpha, scaling)
        # A module, as PEFT's lora_dropout is, so that a test can swap in a known mask; it holds no
        # tensors, so state dicts and adapter files do not change.
        self.lora_dropout = nn.Dropout(dropout)
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

    def drops(self) -> bool:
        """Whether this forward pass applies dropout: training mode with dropout > 0. Otherwise the
        layer runs exactly the code it ran before dropout existed (nothing gets slower)."""
        return self.training and self.dropout > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        return self.base(x) + self.update(self.lora_dropout(x) if self.drops() else x)

    def extra_repr(self) -> str:
        text = f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling_name} (s={self.scaling:g})"
        return text + (f", dropout={self.dropout:g}" if self.dropout else "")


class DoRALinear(LoRALinear):
    """W' = m * (W0 + s*B@A) / ||W0 + s*B@A||, the norm over each output row (DoRA eq. 5).

    ``magnitude`` (m) has out_features entries and starts as the row norms of W0, so the layer equals
    its base at init. With ``detach_norm`` the norm is treated as a constant in the backward pass
    (DoRA section 4.3): it saves memory and, per the paper, costs no accuracy. The bias is added
    after the re-scaling, as in the paper and PEFT: it is not part of the decomposed weight.

    A row of W0 that is all zeros (peft issue 2049) has m = 0 and ||V|| = 0 at init, and 0 / 0 would
    make every output NaN. The norm is floored at NORM_EPS, so the row's scale m / ||V|| is 0: the
    row stays zero, as it is in the base, with finite outputs and gradients. DoRA cannot grow such a
    row (it has no direction to scale, and B's gradient there is scaled by m = 0); LoRA can.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        scaling: str = "standard",
        detach_norm: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__(base, rank, alpha, scaling, dropout)
        self.detach_norm = detach_norm
        self.magnitude = nn.Parameter(row_norms(base.weight.detach()).clone())
        # ||W0 + s*B@A|| as it was at merge time: unmerging needs it, and it cannot be recomputed from
        # W' alone, whose rows all have norm m. Not saved with the state dict (PEFT caches it the same way).
        self.register_buffer("merge_norm", None, persistent=False)
        # The rows of W0 whose magnitude was 0 at merge time, and their values: such a row merges to
        # zeros whatever it held, so unmerge restores it from here. Empty, unless W0 has zero rows.
        self.register_buffer("merge_zero_rows", None, persistent=False)
        self.register_buffer("merge_zero_rows_w0", None, persistent=False)

    def weight_norm(self) -> torch.Tensor:
        """||W0 + s*B@A|| per output row, floored at NORM_EPS; without autograd when detached (DoRA
        section 4.3)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_norm):
            return row_norms(super().merged_weight()).clamp_min(NORM_EPS)

    def merged_weight(self) -> torch.Tensor:
        return (self.magnitude / self.weight_norm()).unsqueeze(1) * super().merged_weight()

    @torch.no_grad()
    def merge(self) -> None:
        self._expect_merged(False)
        self.merge_norm = self.weight_norm()
        self.merge_zero_rows = (self.magnitude == 0).nonzero().squeeze(1)
        self.merge_zero_rows_w0 = self.base.weight[self.merge_zero_rows].clone()
        super().merge()

    @torch.no_grad()
    def unmerge(self) -> None:
        """W0 = W' * ||V|| / m - s*B@A, with ||V|| the norm kept at merge time; rows with m = 0
        (NaN here) are copied back from merge time."""
        self._expect_merged(True)
        self.base.weight.mul_((self.merge_norm / self.magnitude).unsqueeze(1))
        self.base.weight.addmm_(self.lora_B, self.lora_A, alpha=-self.scaling)
        self.base.weight.index_copy_(0, self.merge_zero_rows, self.merge_zero_rows_w0)
        self.merge_norm = self.merge_zero_rows = self.merge_zero_rows_w0 = None
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        scale = self.magnitude / self.weight_norm()
        if self.drops():
            return self.forward_dropout(x, scale)
        # x @ W'^T = (m / ||V||) * (x @ W0^T + s * (x @ A^T) @ B^T), V = W0 + s*B@A. Scaling the
        # output per row keeps the backward pass low-rank: no (out, in) weight gradient is formed,
        # which made the rebuilt-weight form 1.27x the instructions per step of this one.
        directed = F.linear(x, self.base.weight) + self.update(x)
        return directed * scale if self.base.bias is None else torch.addcmul(self.base.bias, directed, scale)

    def forward_dropout(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """DoRA with dropout on the adapter's input, exactly as PEFT applies ``lora_dropout`` to DoRA.

            y = base(x) + (m/||V|| - 1) * (x_d @ W0^T) + (m/||V||) * s * B(A(x_d)),   x_d = dropout(x)

        The frozen base sees x, as in LoRA; the DoRA terms see x_d: the adapter's update and the
        re-scaling of the base, m/||V|| - 1, which is also learnt (peft PR 1474, by DoRA's author;
        peft PR 2153 discusses why the correction takes x_d). The bias is in base(x), once, outside
        the scaling. With x_d = x this is the fast form of ``forward`` (peft PR 2122 reuses base(x)
        the same way when there is no dropout), so dropout changes nothing in eval mode.
        """
        x_d = self.lora_dropout(x)
        return self.base(x) + (scale - 1) * F.linear(x_d, self.base.weight) + scale * self.update(x_d)

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
    (``scaling``, ``dropout``, and ``detach_norm`` for DoRA). Returns the model, whose only trainable parameters
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
