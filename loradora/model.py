"""The network being adapted: a plain multilayer perceptron for flattened MNIST images."""

import torch
from torch import nn

from loradora.choices import N_CLASSES, N_PIXELS


class MLP(nn.Module):
    """784 -> hidden... -> 10 with ReLU between layers; (128, 256) reproduces the seeds' model."""

    def __init__(self, hidden_sizes=(128, 256), n_inputs: int = N_PIXELS, n_classes: int = N_CLASSES):
        super().__init__()
        sizes = [n_inputs, *hidden_sizes, n_classes]
        layers = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        self.layers = nn.Sequential(*layers[:-1])  # no ReLU after the logits

    def forward(self, x):
        return self.layers(x)


def initial_base(hidden_sizes, seed: int, device: torch.device) -> MLP:
    """Seed ``seed``'s untrained base: its initial weights come from torch's global generator, seeded here."""
    torch.manual_seed(seed)
    return MLP(hidden_sizes).to(device)
