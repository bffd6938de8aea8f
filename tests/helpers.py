"""Models, adapter states, results and injected faults shared by the tests."""

import errno
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from loradora.adapters import DoRALinear, LoRALinear
from loradora.data import shuffled_batches
from loradora.results import MethodResult, SeedResults

RANK, ALPHA = 3, 7.0  # alpha != rank, so every scaling convention gives s != 1


def nontrivial(module: nn.Module) -> nn.Module:
    """Give every adapter B != 0 and (for DoRA) a magnitude away from its init, as after training."""
    for layer in module.modules():
        if isinstance(layer, LoRALinear):
            nn.init.normal_(layer.lora_B, std=0.1)
        if isinstance(layer, DoRALinear):
            with torch.no_grad():
                layer.magnitude.mul_(1 + 0.1 * torch.randn_like(layer.magnitude))
    return module


class Block(nn.Module):
    """A residual block whose projections are not square and have no bias."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)
        self.gate = nn.Linear(width, width)

    def forward(self, x):
        return x + self.down(F.gelu(self.up(self.norm(x)))) * torch.sigmoid(self.gate(x))


class Tower(nn.Module):
    """Not our MLP: linear layers nested two deep, with and without bias, of several shapes."""

    def __init__(self, n_in: int = 12, width: int = 16, hidden: int = 24, n_out: int = 5):
        super().__init__()
        self.embed = nn.Linear(n_in, width)
        self.blocks = nn.ModuleList([Block(width, hidden) for _ in range(2)])
        self.head = nn.Linear(width, n_out, bias=False)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


# The same five layers of a Tower, chosen by a regular expression and by PEFT-style name suffixes:
# the second block's projections, the embedding (with bias) and the head (without).
TOWER_TARGETS = ["embed", "blocks.1.up", "blocks.1.down", "head"]
TOWER_PATTERNS = [r"embed|blocks\.1\.(up|down)|head", ["embed", "1.up", "1.down", "head"]]


def rounding_bound(reference: torch.Tensor) -> float:
    """How far two float32 computations of ``reference`` may differ by rounding alone: 1e-5 of its
    scale (and absolutely near zero). Rounding errors grow with the values, so an absolute bound
    holds small logits tight and fails larger ones on another machine (1.1e-5 at logits of ~40)."""
    return 1e-5 * max(1.0, reference.abs().max().item())


def method_result(**fields) -> MethodResult:
    """A finished one-seed MethodResult with plain values, ``fields`` replacing them; a method's
    runs are at its tuned rates unless ``rates`` says otherwise."""
    plain = dict(method=None, rank=None, alpha=None, scaling=None, s=None,
                 rates="tuned" if fields.get("method") is not None else None, lr=0.005, epochs=1, n_train=1_000,
                 n_test=100, trainable_params=10, diverged=False, error=None, test_accuracy=90.0, test_correct=90,
                 train_accuracy=90.0, train_seconds=1.0)
    return MethodResult(**{**plain, **fields})


def seed_results(seed: int, methods: dict[str, MethodResult], decomposition: dict | None = None) -> SeedResults:
    return SeedResults(seed, methods, decomposition or {})


def fail_writes(monkeypatch, refuses, code: int = errno.ENOSPC, after: int = 0) -> None:
    """Fault injection: opening for writing, or making a folder at, a path that ``refuses(path)``
    accepts fails with OSError ``code`` (ENOSPC: a full disk; EROFS: a read-only folder), after
    ``after`` such writes have gone through. os owns the names patched; every write of the package
    (loradora/files.py) and of tempfile goes through them. As root, chmod stops no write: CI runs as root."""
    real_open, real_mkdir = os.open, os.mkdir
    allowed = [after]

    def refused(path) -> bool:
        if not refuses(Path(path)):
            return False
        allowed[0] -= 1
        return allowed[0] < 0

    def open_for_writing(path, flags, mode=0o777, *, dir_fd=None):
        if flags & (os.O_WRONLY | os.O_RDWR) and refused(path):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def mkdir(path, mode=0o777, *, dir_fd=None):
        if refused(path):
            raise OSError(code, os.strerror(code), str(path))
        return real_mkdir(path, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", open_for_writing)
    monkeypatch.setattr(os, "mkdir", mkdir)


def named(filename: str):
    """For ``fail_writes``: the file ``filename`` and the temporary files it is written through."""
    return lambda path: path.name == filename or path.name.startswith(f".{filename}.")


def under(folder: Path):
    """For ``fail_writes``: ``folder`` and everything in it."""
    return lambda path: path == folder or folder in path.parents


def reference_losses(model: nn.Module, data, seed: int, epochs: int, lr: float, batch_size: int,
                     groups: list[dict] | None = None) -> list[float]:
    """Every batch loss of the plainest training loop: torch's own Adam (its fused kernel, the one
    loradora's FusedAdam calls) on cross-entropy, in the batch order ``data.shuffled_batches`` draws
    from ``seed``. Nothing of loradora.training runs in it: an oracle for the loop, not a copy.
    ``groups``: torch's parameter groups, each at its own rate, instead of every parameter at ``lr``."""
    optimizer = torch.optim.Adam(groups or [p for p in model.parameters() if p.requires_grad], lr=lr, fused=True)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for _ in range(epochs):
        for indices in shuffled_batches(len(data), batch_size, generator, data.images.device):
            loss = F.cross_entropy(model(data.images[indices]), data.labels[indices])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses
