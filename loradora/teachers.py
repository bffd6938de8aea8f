"""Teachers made from a pretrained base, so that what fine-tuning has to learn is known in advance.

A teacher is the base with every linear layer's weight changed in one known way, biases kept; its
predictions on the MNIST images are a task's labels. Which of DoRA's parts can reach it follows
from its construction (DoRA sections 3.2 and 4.1):

    gain   W0 -> diag(c) W0, each output row rescaled by its own factor c, log-uniform in
           [1/2, 2]. A full-rank change of W0, which LoRA at rank r < out cannot express; DoRA's
           magnitude expresses it exactly with B = 0: m = c * ||W0|| row by row (``gain_magnitudes``).
    turn   W0 -> diag(||W0|| / ||W0 + D||) (W0 + D), D of rank 2: every row turned, its norm
           restored. DoRA's direction alone expresses it exactly at rank 2 (s B A = D, m = ||W0||);
           LoRA only approximately, since restoring the norms rescales the rows.

The factors and turns are drawn on the CPU from ``seed``, so one seed gives one teacher of a base on
every device.
"""

import copy

import torch
from torch import nn

from loradora.adapters import row_norms

GAIN_RANGE = (0.5, 2.0)  # the factors' range: 2x either way moves logits far enough to change labels
TURN_RANK = 2
TURN_SIZE = 0.5  # ||D|| / ||W0||, Frobenius norms per layer: rows turn by a median 19-24 degrees (untrained MLP)


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    """The model's ``nn.Linear`` layers, in model order."""
    return [module for module in model.modules() if type(module) is nn.Linear]


def gain_factors(model: nn.Module, seed: int) -> list[torch.Tensor]:
    """One factor per output row of every linear layer of ``model``, log-uniform in ``GAIN_RANGE``."""
    generator = torch.Generator().manual_seed(seed)
    low, high = (torch.log(torch.tensor(bound)) for bound in GAIN_RANGE)
    return [torch.exp(low + (high - low) * torch.rand(layer.out_features, generator=generator))
            for layer in linear_layers(model)]


def gain_magnitudes(model: nn.Module, seed: int) -> list[torch.Tensor]:
    """DoRA's magnitude m = c * ||W0|| per layer: with B = 0 it makes the base the gain teacher."""
    return [factors.to(layer.weight) * row_norms(layer.weight.detach())
            for factors, layer in zip(gain_factors(model, seed), linear_layers(model))]


@torch.no_grad()
def gain_teacher(base: nn.Module, seed: int) -> nn.Module:
    """A copy of ``base`` with every linear layer's rows rescaled by ``gain_factors``, biases kept."""
    teacher = copy.deepcopy(base).requires_grad_(False)
    for factors, layer in zip(gain_factors(teacher, seed), linear_layers(teacher)):
        layer.weight.mul_(factors.to(layer.weight).unsqueeze(1))
    return teacher


def turn_updates(model: nn.Module, seed: int) -> list[torch.Tensor]:
    """The rank-``TURN_RANK`` change D of every linear layer, ||D|| = ``TURN_SIZE`` * ||W0||."""
    generator = torch.Generator().manual_seed(seed)
    updates = []
    for layer in linear_layers(model):
        weight = layer.weight.detach()
        left = torch.randn(layer.out_features, TURN_RANK, generator=generator, dtype=torch.float64)
        right = torch.randn(TURN_RANK, layer.in_features, generator=generator, dtype=torch.float64)
        update = (left @ right).to(weight)
        updates.append(update * (TURN_SIZE * torch.linalg.norm(weight) / torch.linalg.norm(update)))
    return updates


@torch.no_grad()
def turn_teacher(base: nn.Module, seed: int) -> nn.Module:
    """A copy of ``base`` with every linear layer's rows turned by ``turn_updates``, each row's norm
    restored to W0's, biases kept."""
    teacher = copy.deepcopy(base).requires_grad_(False)
    for update, layer in zip(turn_updates(teacher, seed), linear_layers(teacher)):
        norms = row_norms(layer.weight)
        turned = layer.weight + update
        layer.weight.copy_(turned * (norms / row_norms(turned)).unsqueeze(1))
    return teacher


TEACHERS = {"gain": gain_teacher, "turn": turn_teacher}
