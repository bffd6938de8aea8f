"""Whole default pipeline: this project's against the same pipeline written the seeds' way.

    python benchmarks/pipeline_vs_seeds.py [--repeats 1] [key.sub=value ...]

Both run in this one process, on the same machine, one after the other (then alternately, with
--repeats), so the ratio is measured side by side. Each is timed end to end, data loading and
evaluations included, Python and torch start-up excluded. "The seeds' way" is the from-scratch
article's structure: torchvision ToTensor() through a DataLoader, the adapted weight rebuilt in
every forward, and accuracy passes over the train and test loaders after each phase. It uses this
project's conventions (row norm, alpha/rank), which cost the same as the article's.
"""

import argparse
import contextlib
import copy
import io
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import dora_example  # noqa: E402
from loradora.config import load_config, resolve_device  # noqa: E402
from loradora.model import MLP  # noqa: E402


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


def seeds_train(model, epochs, lr, train_loader, device):
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
        print(f"train accuracy {seeds_accuracy(model, train_loader, device):.2f}%")


def seeds_pipeline(config, device) -> dict:
    to_tensor = transforms.ToTensor()
    train_set = datasets.MNIST(config.data.root, train=True, transform=to_tensor, download=config.data.download)
    test_set = datasets.MNIST(config.data.root, train=False, transform=to_tensor)
    train_loader = DataLoader(train_set, batch_size=config.pretrain.batch_size, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=config.pretrain.batch_size, shuffle=False)
    torch.manual_seed(config.seed)
    model = MLP(config.model.hidden_sizes).to(device)
    seeds_train(model, config.pretrain.epochs, config.pretrain.lr, train_loader, device)
    accuracies = {"pretrained": seeds_accuracy(model, test_loader, device)}
    layers = {"lora": SeedsLoRAMerged, "dora": SeedsDoRAMerged}
    for method in config.finetune.methods:
        tuned = copy.deepcopy(model).requires_grad_(False)
        adapter = getattr(config, method)
        for i, layer in enumerate(tuned.layers):
            if isinstance(layer, nn.Linear):
                tuned.layers[i] = layers[method](layer, adapter.rank, adapter.alpha).to(device)
        seeds_train(tuned, config.finetune.epochs, config.finetune.lr, train_loader, device)
        accuracies[method] = seeds_accuracy(tuned, test_loader, device)
    return accuracies


def project_pipeline(config, device) -> dict:
    summary = dora_example.run(config, device)
    return {name: result["test_accuracy"] for name, result in summary["methods"].items()}


def timed(pipeline, config, device) -> tuple[float, dict]:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        accuracies = pipeline(config, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, accuracies


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two this many times")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args()
    # Like for like: the seeds' way neither reuses a cached base nor records the dM/dD analysis.
    config = load_config(dora_example.DEFAULT_CONFIG,
                         ["cache.enabled=false", "analysis.every_n_batches=null", *args.overrides])
    device = resolve_device(config.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    times = {"project": [], "seeds' way": []}
    for repeat in range(args.repeats):
        for name, pipeline in [("project", project_pipeline), ("seeds' way", seeds_pipeline)]:
            seconds, accuracies = timed(pipeline, config, device)
            times[name].append(seconds)
            shown = ", ".join(f"{m} {a:.2f}%" for m, a in accuracies.items())
            print(f"{name:>10}: {seconds:6.1f} s  ({shown})", flush=True)
    project, seeds = (statistics.median(times[name]) for name in times)
    print(f"median: project {project:.1f} s, seeds' way {seeds:.1f} s; "
          f"project / seeds' way = {project / seeds:.3f} (seeds' way is {seeds / project:.1f}x slower)")


if __name__ == "__main__":
    main()
