"""LoRA and DoRA adapter layers, and the functions that put them on a model and take them off.

Both layers wrap a frozen ``nn.Linear`` whose weight W0 has shape (out_features, in_features).
LoRA (Hu et al. 2021, arXiv 2106.09685) learns a low-rank update s * B @ A; DoRA (Liu et al.
2024, arXiv 2402.09353) re-parametrises the updated weight into a magnitude and a direction:

    W' = m * (W0 + s * B @ A) / ||W0 + s * B @ A||

with the norm taken per output row, so m has one entry per output feature.

The maths is written once, as tensor functions that take one layer's tensors or a population's
(``lora_forward``, ``dora_forward``, ``dora_row_norm``): the layers here and the stacked layers of
loradora/population.py only hold the parameters and call them.

Both take ``dropout`` as PEFT's ``lora_dropout``: in training, the adapter path sees dropout(x),
the frozen base path sees x (for DoRA with a correction, see ``dora_forward``).

A layer can be merged in place for inference (its base weight becomes W') and unmerged back to W0;
``merge_adapters`` turns a whole model back into plain ``nn.Linear`` layers for deployment.
"""

import math
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from loradora.choices import lora_scaling  # noqa: F401  (the scaling rule lives with its names)

# DoRA's floor under ||V||, which is 0 only for an all-zero row: torch's F.normalize divides by
# max(||v||, 1e-12) for the same reason. Rows of a trained weight have norms many orders above it.
NORM_EPS = 1e-12


# ---- The adapter maths, once ----
# Every layer below, and every stacked layer of a population (loradora/population.py), computes
# through these functions; nothing else re-derives them. Weights are in nn.Linear's layout,
# (..., out, in), with A (..., rank, in) and B (..., out, rank). A leading member dimension N, when
# there is one, is batched over: x is then (N, batch, in), s an (N, 1, 1) tensor, m (N, out).


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight^T + bias, as nn.Linear does, over a leading member dimension when x has one."""
    if x.dim() == 2:
        return F.linear(x, weight, bias)
    return torch.bmm(x, weight.mT) if bias is None else torch.baddbmm(bias, x, weight.mT)


def lora_update(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, s) -> torch.Tensor:
    """s * (x @ A^T) @ B^T: two thin matmuls through the rank bottleneck, never the (out, in)
    update matrix."""
    return s * linear(linear(x, A), B)


def lora_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, A: torch.Tensor,
                 B: torch.Tensor, s, x_dropped: torch.Tensor | None = None) -> torch.Tensor:
    """LoRA: h = W0 x + b + s * B A x (LoRA paper eq. 3, with its scaling s, section 4.1).

    With dropout (PEFT's ``lora_dropout``), ``x_dropped`` = dropout(x) feeds the adapter alone; the
    frozen base path sees x.
    """
    return lora_output(linear(x, weight, bias), linear(x if x_dropped is None else x_dropped, A), B, s)


def lora_output(base: torch.Tensor, down: torch.Tensor, B: torch.Tensor, s) -> torch.Tensor:
    """``lora_forward`` from its two products of the input: base = W0 x + b and down = A x. A
    population whose members share a frozen base and batch order computes them once for all
    (population.SharedInput); everything after them is this."""
    return base + s * linear(down, B)


def lora_weight(weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor, s) -> torch.Tensor:
    """W0 + s * B @ A, (..., out, in): formed only to merge it, or to take DoRA's norm of it."""
    if weight.dim() == 2:
        return torch.addmm(weight, B, A, alpha=s)  # one fused multiply-add
    return weight + s * torch.bmm(B, A)  # a per-member s is a tensor, which addmm's alpha cannot be


def in_float32(weight: torch.Tensor):
    """A context in which autocast (precision: bf16) leaves the products in the weight's own dtype.

    DoRA's row norm is the magnitude's divisor: rounded to bfloat16's 8 bits it would move m / ||V||
    off 1 at init (the output off the base's) and the norm off the one the gradient is scaled by.
    Its products do not grow with the batch, so float32 costs little.
    """
    return torch.autocast(weight.device.type, enabled=False)


def dora_row_norm(weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor, s, detach: bool) -> torch.Tensor:
    """||W0 + s*B@A|| over each output row, (..., out): DoRA eq. 5's ||.||_c, one per entry of m.

    Floored at NORM_EPS, so an all-zero row gives m / ||V|| = 0, not NaN. With ``detach`` the norm
    is a constant to autograd (DoRA section 4.3): the gradient skips its term, and no graph is kept.
    """
    with torch.set_grad_enabled(torch.is_grad_enabled() and not detach), in_float32(weight):
        return row_norms(lora_weight(weight, A, B, s)).clamp_min(NORM_EPS)


def dora_row_norm_expanded(weight: torch.Tensor, weight_norm_sq: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                           s, detach: bool) -> torch.Tensor:
    """``dora_row_norm`` without forming V: with ||W0_o||^2 cached (``weight_norm_sq``, (..., 1, out)),

        ||V_o||^2 = ||W0_o||^2 + 2s * sum_j B_oj (A W0^T)_jo + s^2 * sum_jk B_oj (A A^T)_jk B_ok,

    the same FLOPs, but no (N, out, in) tensor written and read again every step: the population's
    fast path (population.DEFAULT_NORM; tests hold it to ``dora_row_norm``).
    """
    with torch.set_grad_enabled(torch.is_grad_enabled() and not detach), in_float32(weight):
        cross = (B.mT * (A @ weight.mT)).sum(dim=-2, keepdim=True)
        quadratic = (B.mT * ((A @ A.mT) @ B.mT)).sum(dim=-2, keepdim=True)
        squared = weight_norm_sq + 2 * s * cross + s * s * quadratic
        return squared.clamp_min(NORM_EPS**2).sqrt().squeeze(-2)  # a zero row: as dora_row_norm's floor


def dora_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, A: torch.Tensor, B: torch.Tensor,
                 s, magnitude: torch.Tensor, norm: torch.Tensor, x_dropped: torch.Tensor | None = None) -> torch.Tensor:
    """DoRA: h = m * (W0 + s*B@A) / ||W0 + s*B@A|| x + b (DoRA eq. 5), with ``norm`` that row norm
    (``dora_row_norm``, detached per section 4.3). The bias is added after the re-scaling, as in
    the paper and PEFT: it is not part of the decomposed weight.

    Computed as (m / ||V||) * (W0 x + s * B A x): scaling the output per row keeps the backward pass
    low-rank, no (out, in) weight gradient is formed (the rebuilt-weight form took 1.27x the
    instructions per step, measured).

    With dropout, exactly as PEFT applies ``lora_dropout`` to DoRA (x_d = ``x_dropped``):

        h = W0 x + b + (m/||V|| - 1) * (W0 x_d) + (m/||V||) * s * B A x_d

    The frozen base sees x, as in LoRA; the DoRA terms see x_d: the adapter's update and the
    re-scaling of the base, m/||V|| - 1, which is also learnt (peft PR 1474, by DoRA's author;
    peft PR 2153 discusses why the correction takes x_d). With x_d = x it is the form above.
    """
    if x_dropped is not None:
        scale = (magnitude / norm).unsqueeze(-2)  # one factor per output feature, for every row of x
        return (linear(x, weight, bias) + (scale - 1) * linear(x_dropped, weight)
                + scale * lora_update(x_dropped, A, B, s))
    return dora_output(linear(x, weight), linear(x, A), B, s, bias, magnitude, norm)


def dora_output(base: torch.Tensor, down: torch.Tensor, B: torch.Tensor, s, bias: torch.Tensor | None,
                magnitude: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """``dora_forward`` (without dropout) from its two products of the input: base = W0 x, without
    the bias, and down = A x (see ``lora_output``)."""
    scale = (magnitude / norm).unsqueeze(-2)  # one factor per output feature, for every row of x
    directed = base + s * linear(down, B)
    return directed * scale if bias is None else torch.addcmul(bias, directed, scale)


def row_norms(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each output row of an (..., out, in) weight: one entry per output feature.

    Not over dim -2: that is the norm over input columns, a bug in one reference implementation.
    """
    return torch.linalg.vector_norm(weight, dim=-1)


def applies_dropout(layer: nn.Module) -> bool:
    """Whether this forward pass applies dropout: training mode with dropout > 0. Otherwise the
    layer runs exactly the code it ran before dropout existed (nothing gets slower)."""
    return layer.training and layer.dropout > 0


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
        """W0 + s * B @ A, shape (out, in)."""
        return lora_weight(self.base.weight, self.lora_A, self.lora_B, self.scaling)

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
        return lora_forward(x, self.base.weight, self.base.bias, self.lora_A, self.lora_B, self.scaling,
                            self.lora_dropout(x) if applies_dropout(self) else None)

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
        """||W0 + s*B@A|| per output row (``dora_row_norm``)."""
        return dora_row_norm(self.base.weight, self.lora_A, self.lora_B, self.scaling, self.detach_norm)

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
        return dora_forward(x, self.base.weight, self.base.bias, self.lora_A, self.lora_B, self.scaling,
                            self.magnitude, self.weight_norm(),
                            self.lora_dropout(x) if applies_dropout(self) else None)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, detach_norm={self.detach_norm}"


class DoRAMagnitude(DoRALinear):
    """DoRA that trains its magnitude alone: B stays at zero, so V = W0 and W' = m * W0 / ||W0||.

    Each output row can change its gain, never its direction: DoRA's magnitude component by itself
    (DoRA section 3.2), one number per output feature. A is frozen too: with B = 0 its gradient,
    B^T times the output's, is zero anyway, and a frozen A keeps the count of trainable parameters
    honest (m alone). The maths is ``DoRALinear``'s; only what trains differs.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lora_A.requires_grad_(False)
        self.lora_B.requires_grad_(False)


class DoRADirection(DoRALinear):
    """DoRA that trains its direction alone: m stays at ||W0|| row by row, so every row of
    W' = m * V / ||V|| keeps its pretrained norm while B A turns it: a weight-normalised LoRA.

    What DoRA's direction learns without the magnitude beside it (DoRA section 4.1: the gradient of
    V is scaled by m / ||V|| and, with the norm detached, not projected; section 4.3).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.magnitude.requires_grad_(False)


# keys: choices.ADAPTER_METHODS (tested); magnitude and direction take the dora: section's settings
ADAPTERS = {"lora": LoRALinear, "dora": DoRALinear, "magnitude": DoRAMagnitude, "direction": DoRADirection}


def add_adapters(model: nn.Module, method: str, rank: int, alpha: float,
                 targets: str | Sequence[str] | None = None, **options) -> nn.Module:
    """Freeze every parameter of ``model`` and wrap the target ``nn.Linear`` layers in place.

    ``method`` is a key of ``ADAPTERS`` (lora, dora, or a part of DoRA alone); ``targets`` picks layers by name as PEFT's ``target_modules``
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
