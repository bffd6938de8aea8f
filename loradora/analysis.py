"""The weight-decomposition analysis of the DoRA paper (section 3.2, figure 2).

For a layer with pretrained weight W0 and fine-tuned effective weight W, both (out, in), split each
output row into a magnitude m = ||W_row|| and a direction V = W_row / ||W_row||, then

    dM = mean over rows of |m - m0|                 (how much the magnitudes moved)
    dD = mean over rows of 1 - cos(V, V0)           (how much the directions turned)

The paper's W is (d, k) with column-wise norms, one per output feature; our rows are those columns.
Over the steps it is measured at and the layers, the paper finds dM falling as dD rises for full fine-tuning and DoRA
(negative slope) and rising with it for LoRA (positive slope): LoRA cannot change the one without
the other, which is what the magnitude vector of DoRA is for.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from loradora.adapters import LoRALinear, row_norms
from loradora.stats import Line, fit_line


def decomposition_change(initial: torch.Tensor, current: torch.Tensor) -> tuple[float, float]:
    """(dM, dD) of ``current`` against ``initial``, two (out, in) weights; see the module docstring."""
    if initial.shape != current.shape:
        raise ValueError(f"weights differ in shape: {tuple(initial.shape)} and {tuple(current.shape)}")
    initial, current = initial.double(), current.double()  # 1 - cos is tiny early on: keep its digits
    magnitude = (row_norms(current) - row_norms(initial)).abs().mean()
    direction = (1 - F.cosine_similarity(current, initial, dim=1)).mean()
    return magnitude.item(), direction.item()


def effective_weights(model: nn.Module, trainable_only: bool = True) -> dict[str, torch.Tensor]:
    """The weight each linear layer applies, by layer name: ``merged_weight()`` for an adapter,
    ``.weight`` for a plain ``nn.Linear``. With ``trainable_only``, only layers fine-tuning can change
    (all of them under full fine-tuning and adapters, the last under ``head``)."""
    weights = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            weights[name] = module.merged_weight().detach()
        elif type(module) is nn.Linear and not _inside_adapter(model, name):
            if not trainable_only or any(p.requires_grad for p in module.parameters()):
                weights[name] = module.weight.detach().clone()
    return weights


def _inside_adapter(model: nn.Module, name: str) -> bool:
    """Whether ``name`` is the frozen ``base`` of an adapter (then the adapter speaks for it)."""
    parent = name.rpartition(".")[0]
    return parent != "" and isinstance(model.get_submodule(parent), LoRALinear)


@dataclass
class DecompositionPoint:
    step: int
    layer: str
    dM: float
    dD: float


class DecompositionTracker:
    """Records (dM, dD) of every trainable layer against its weight when the tracker was made.

    Call it with the optimiser step count at each step to measure; it computes under no_grad, and the
    training loop leaves its time out of the epoch's seconds.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        with torch.no_grad():
            self.initial = effective_weights(model)
        self.shapes = {name: tuple(weight.shape) for name, weight in self.initial.items()}  # (out, in)
        self.points: list[DecompositionPoint] = []

    @torch.no_grad()
    def __call__(self, step: int) -> None:
        if self.points and self.points[-1].step == step:
            return  # already recorded: the last step may be a periodic one too
        for name, weight in effective_weights(self.model).items():
            self.points.append(DecompositionPoint(step, name, *decomposition_change(self.initial[name], weight)))


MIN_POINTS = 5  # fewer points than this fit a line that says nothing


def fit_decomposition(points: list[DecompositionPoint]) -> Line | None:
    """The paper's line of dM on dD over every measured step and layer; None where it would not be honest.

    None with fewer than ``MIN_POINTS`` points, with every point from one step (the final points
    of a few seeds and layers say nothing about how training moved them), or without two distinct dD.
    """
    if len(points) < MIN_POINTS or len({point.step for point in points}) < 2 or len({point.dD for point in points}) < 2:
        return None
    return fit_line([point.dD for point in points], [point.dM for point in points])


def unavailable_reason(points: list[DecompositionPoint]) -> str:
    """Why ``fit_decomposition`` gave no line for ``points``, in words for the report."""
    if len(points) < MIN_POINTS:
        return f"{len(points)} points, fewer than {MIN_POINTS}"
    if len({point.step for point in points}) < 2:
        return "every point is from one step (set analysis.every_n_batches below the run's steps)"
    return "dD does not vary"
