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
import json
import sys
from pathlib import Path

import torch
from torch import nn

from loradora.adapters import row_norms
from loradora.stats import fit_line, over_seeds, paired_difference, spread

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


@torch.no_grad()
def gain_recovery(model: nn.Module, base: nn.Module, seed: int) -> dict:
    """How far fine-tuning on the gain task moved each row's gain towards the teacher's: the
    least-squares slope of log(learnt gain) on log(c) over every row of every layer (1: the gains
    recovered exactly; 0: none moved with c), and per layer. A row's learnt gain is
    ||W'_row|| / ||W0_row||, W' the adapted weight as merged (adapters' ``merged_weight``), c the
    teacher's factor (``gain_factors``, drawn from the teacher ``seed``)."""
    learnt = [row_norms(_weight(layer)) / row_norms(base_layer.weight) for layer, base_layer
              in zip(_adapted_layers(model), linear_layers(base))]
    factors = gain_factors(base, seed)
    slopes = [_slope(c, g) for c, g in zip(factors, learnt)]
    return {"slope": _slope(torch.cat(factors), torch.cat(learnt)), "per_layer": slopes}


def _adapted_layers(model: nn.Module) -> list[nn.Module]:
    """Each linear layer of ``model`` in order, as an adapter where it has one (its base inside)."""
    layers = []
    for module in model.modules():
        if hasattr(module, "merged_weight"):
            layers.append(module)
        elif type(module) is nn.Linear and not any(module is getattr(m, "base", None) for m in layers):
            layers.append(module)
    return layers


def _weight(layer: nn.Module) -> torch.Tensor:
    return layer.merged_weight() if hasattr(layer, "merged_weight") else layer.weight


def _slope(factors: torch.Tensor, gains: torch.Tensor) -> float:
    """The least-squares slope of log(gain) on log(factor)."""
    return fit_line(torch.log(factors.double()).tolist(), torch.log(gains.double()).tolist()).slope


def recovered_gains(run: Path) -> dict[str, dict[int, float]]:
    """Per phase, each seed's ``gain_recovery`` slope, from a gain run's metrics.jsonl."""
    slopes: dict[str, dict[int, float]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "gain_recovery":
            slopes.setdefault(record["phase"], {})[record["seed"]] = record["slope"]
    return slopes


def report_recovery(runs: list[Path]) -> str:
    """Each run's slopes per phase, mean with its 95% t interval over seeds; with two runs, each
    phase they share as a paired difference (second - first), paired by seed."""
    lines, slopes = [], [recovered_gains(run) for run in runs]
    for run, phases in zip(runs, slopes):
        for phase, by_seed in phases.items():
            values = list(by_seed.values())
            over = over_seeds(values)
            interval = f" [{over['ci95'][0]:.3f}, {over['ci95'][1]:.3f}]" if over else ""
            lines.append(f"{run}: {phase}: slope of log(learnt gain) on log(c) {spread(values).mean:.3f}"
                         f"{interval} over {len(values)} seeds")
    if len(runs) == 2:
        for phase in slopes[0].keys() & slopes[1].keys():
            seeds = sorted(slopes[0][phase].keys() & slopes[1][phase].keys())
            if len(seeds) >= 2:
                d = paired_difference([slopes[1][phase][s] for s in seeds], [slopes[0][phase][s] for s in seeds])
                lines.append(f"{phase}: second run - first, paired by seed: {d.mean:+.3f} [{d.ci95[0]:+.3f}, {d.ci95[1]:+.3f}]")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m loradora.teachers results/<gain run> [results/<another>]
    if not 2 <= len(sys.argv) <= 3:
        sys.exit("usage: python -m loradora.teachers <gain run folder> [<another, paired by seed>]")
    print(report_recovery([Path(arg) for arg in sys.argv[1:]]))
