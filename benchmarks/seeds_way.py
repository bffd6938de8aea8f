"""The seeds' way of writing this experiment, kept only to measure against.

The from-scratch DoRA article's structure: torchvision ToTensor() through a DataLoader (a PIL image
converted per sample, every step), the adapted weight rebuilt in every forward, the default
(per-tensor) Adam, and accuracy passes over the train and test loaders after each phase. It uses
this project's conventions (row norm, alpha/rank), which cost the same as the article's.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from loradora.model import MLP


class SeedsLoRAMerged(nn.Module):
    """The seeds' LinearWithLoRAMerged: W0 + s*B@A rebuilt in every forward."""

    def __init__(self, linear: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.linear = linear
        std = 1 / rank ** 0.5
        self.A = nn.Parameter(torch.randn(linear.in_features, rank) * std)
        self.B = nn.Parameter(torch.zeros(rank, linear.out_features))
        self.scaling = alpha / rank

    def weight(self):
        return self.linear.weight + self.scaling * (self.A @ self.B).T

    def forward(self, x):
        return F.linear(x, self.weight(), self.linear.bias)


class SeedsDoRAMerged(SeedsLoRAMerged):
    """The seeds' LinearWithDoRAMerged, with the norm over output rows."""

    def __init__(self, linear: nn.Linear, rank: int, alpha: float):
        super().__init__(linear, rank, alpha)
        self.m = nn.Parameter(linear.weight.norm(dim=1, keepdim=True))

    def forward(self, x):
        directed = super().weight()
        return F.linear(x, self.m * directed / directed.norm(dim=1, keepdim=True), self.linear.bias)


def seeds_accuracy(model, loader, device):
    correct = total = 0
    with torch.no_grad():
        for features, targets in loader:
            logits = model(features.view(-1, 28 * 28).to(device))
            correct += (logits.argmax(1) == targets.to(device)).sum().item()
            total += len(targets)
    return 100.0 * correct / total


def seeds_loaders(root, batch_size: int, download: bool = True) -> tuple[DataLoader, DataLoader]:
    to_tensor = transforms.ToTensor()
    train_set = datasets.MNIST(root, train=True, transform=to_tensor, download=download)
    test_set = datasets.MNIST(root, train=False, transform=to_tensor)
    return (DataLoader(train_set, batch_size=batch_size, shuffle=True),
            DataLoader(test_set, batch_size=batch_size, shuffle=False))


def seeds_adapt(model: nn.Module, method: str, rank: int, alpha: float) -> nn.Module:
    """A frozen copy of ``model`` with every nn.Linear wrapped the seeds' way."""
    tuned = copy.deepcopy(model).requires_grad_(False)
    layer = {"lora": SeedsLoRAMerged, "dora": SeedsDoRAMerged}[method]
    device = next(model.parameters()).device
    for i, module in enumerate(tuned.layers):
        if isinstance(module, nn.Linear):
            tuned.layers[i] = layer(module, rank, alpha).to(device)
    return tuned


def seeds_train(model, epochs, lr, train_loader, device, accuracy_pass=True):
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for epoch in range(epochs):
        model.train()
        for batch_idx, (features, targets) in enumerate(train_loader):
            logits = model(features.view(-1, 28 * 28).to(device))
            loss = F.cross_entropy(logits, targets.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if not batch_idx % 400:
                print(f"Epoch: {epoch + 1:03d}/{epochs:03d} | Batch {batch_idx:03d}/{len(train_loader):03d} "
                      f"| Loss: {loss:.4f}")
        if accuracy_pass:
            print(f"train accuracy {seeds_accuracy(model, train_loader, device):.2f}%")


def seeds_pipeline(config, device) -> dict:
    train_loader, test_loader = seeds_loaders(config.data.root, config.pretrain.batch_size, config.data.download)
    torch.manual_seed(config.seed)
    model = MLP(config.model.hidden_sizes).to(device)
    seeds_train(model, config.pretrain.epochs, config.pretrain.lr, train_loader, device)
    accuracies = {"pretrained": seeds_accuracy(model, test_loader, device)}
    for method in config.finetune.methods:
        adapter = getattr(config, method)
        tuned = seeds_adapt(model, method, adapter.rank, adapter.alpha)
        seeds_train(tuned, config.finetune.epochs, config.finetune.lr, train_loader, device)
        accuracies[method] = seeds_accuracy(tuned, test_loader, device)
    return accuracies
