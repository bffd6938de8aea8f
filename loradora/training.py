"""The training loop, for one model or a population, and evaluation, over tensors already on the device."""

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from loradora.adam import FusedAdam
from loradora.data import Split, shuffled_batches
from loradora.variants import ONE_RATE, PartRates

EVAL_BATCH_SIZE = 4096  # large batches: evaluation is forward-only, so memory stays small


class Diverged(RuntimeError):
    """A batch loss was non-finite or above ``max_loss``: the phase cannot give a usable model."""


@dataclass
class Accuracy:
    correct: int
    total: int
    hits: torch.Tensor | None = field(default=None, compare=False, repr=False)  # per image, bool, on the CPU

    @property
    def percent(self) -> float:
        return 100.0 * self.correct / self.total


@dataclass
class MemberRun:
    """What training did to one member: its epoch records (as ``train`` returns them), or why it stopped."""
    epoch_records: list[dict]
    diverged: str | None = None  # the divergence message, when its loss went non-finite or above max_loss


class Step(Protocol):
    """What one optimiser step of N members takes: the only part of the loop that differs between
    one plain model (``OneModel``) and a population of stacked ones (``population.PopulationStep``)."""

    def __len__(self) -> int: ...

    def step(self, data: Split, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step on each member's batch, (N, batch) indices into ``data``; returns each member's
        loss (N,), logits (N, batch, classes) and labels (N, batch)."""

    def keep(self, rows: list[int]) -> None:
        """Go on with the members ``rows`` only; the others keep their weights as they are."""

    def write_back(self) -> None:
        """Leave every member's weights in its own modules."""


def products_in(precision: str, device: torch.device):
    """The context a training step's forward pass runs in (the config's ``precision``).

    fp32: as written. bf16: under ``torch.autocast``, the matrix products take bfloat16 inputs (and
    accumulate in float32), while the parameters, their gradients and Adam's state stay float32
    (master weights) and the elementwise work stays in float32 where its inputs are (mixed
    precision, as Lightning's "bf16-mixed" and the HF Trainer's bf16 run it). bfloat16 keeps
    float32's exponent range, so no loss scaling is needed. Evaluation is not in it: accuracies
    are those of the trained float32 weights.
    """
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def widened(logits: torch.Tensor) -> torch.Tensor:
    """The logits the loss takes: bfloat16 ones (precision bf16) as float32, the softmax's sums at
    float32's precision; float32 and float64 ones as they are."""
    return logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits


class OneModel:
    """The step of one plain model: Adam on its cross-entropy, over its trainable parameters.

    Not a population of one: that runs 1.05x (LoRA) to 1.15x (DoRA) slower per epoch on 2 cores of
    an Intel Xeon (measured, 60,000 images), for the stacking it does not need.
    """

    def __init__(self, model: nn.Module, lr: float, precision: str = "fp32", order: int | None = None,
                 parts: PartRates = ONE_RATE):
        # fused: one kernel per step for all parameters instead of ~10 per tensor; the same update
        # rule as the default Adam (a test compares their losses), and steps 1.32x (full), 1.12x
        # (LoRA) and 1.21x (DoRA) faster on the 2-core CPU, measured side by side. ``parts``: B and
        # DoRA's magnitude at their own multiples of lr.
        trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.model = model
        self.optimizer = FusedAdam([p for _, p in trainable], lr=lr, scales=[parts.of(name) for name, _ in trainable])
        self.precision, self.order = precision, order  # order: its seed, which picks its labels per seed
        model.train()

    def __len__(self) -> int:
        return 1

    def step(self, data: Split, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels = data.batch(indices, data.rows([self.order]))
        images, labels = images[0], labels[0]
        with products_in(self.precision, images.device):
            logits = self.model(images)
        loss = F.cross_entropy(widened(logits), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach().unsqueeze(0), logits.detach().unsqueeze(0), labels.unsqueeze(0)

    def keep(self, rows: list[int]) -> None:
        raise AssertionError("one model has no other member to go on with")

    def write_back(self) -> None:
        pass  # it trains in its own modules


def train(model: nn.Module, data: Split, *, epochs: int, batch_size: int, lr: float,
          generator: torch.Generator, log: Callable[[dict], None], log_every: int,
          max_loss: float = math.inf, observe: Callable[[int], None] | None = None,
          observe_every: int | None = None, precision: str = "fp32") -> list[dict]:
    """``train_members`` for one model: its epoch records, or Diverged with the divergence message."""
    run, = train_members(OneModel(model, lr, precision), data, epochs=epochs, batch_size=batch_size, generators=[generator],
                         log=lambda records: log(records[0]), log_every=log_every, max_loss=max_loss,
                         observe=None if observe is None else lambda step, alive: observe(step),
                         observe_every=observe_every)
    if run.diverged:
        raise Diverged(run.diverged)
    return run.epoch_records


def train_members(members: Step, data: Split, *, epochs: int, batch_size: int, generators: Sequence[torch.Generator],
                  log: Callable[[dict[int, dict]], None], log_every: int, max_loss: float = math.inf,
                  observe: Callable[[int, list[int]], None] | None = None,
                  observe_every: int | None = None, steps: int | None = None,
                  subsets: Sequence[torch.Tensor] | None = None) -> list[MemberRun]:
    """The training loop: Adam on each member's own cross-entropy, every member at once; one
    ``MemberRun`` per member.

    Member i draws its batch order from ``generators[i]``. ``log`` receives {member index: record}
    at every ``log_every``-th batch and one epoch record per member at each epoch's end: the mean
    loss, every batch's loss (``batch_losses``, for the loss curves), the accuracy on the batches as
    they were trained (the whole epoch, not one batch) and the epoch's seconds, the members'
    divided by their number (the per-member cost). Between records the loop never waits for the
    device: losses and accuracies accumulate as tensors, and ``.item()`` is called only when a
    record is made. Timing synchronises the GPU and excludes evaluation.

    The one divergence rule: a member whose worst batch loss so far is non-finite or above
    ``max_loss``, checked at every logged batch and at each epoch's last, is diverged (Adam bounds
    each step by lr, so lr=1e3 gives huge but finite losses, not NaN). It is taken out (its weights
    as they were) and the others go on. ``observe(step, alive)`` runs after every
    ``observe_every``-th step with the members written back into their modules; ``alive`` lists the
    indices still training; its time is left out of the epoch's seconds. The members' modules hold
    their trained weights on return.

    With ``steps``, ``epochs`` is ignored: each member trains exactly ``steps`` batches, drawn from
    as many shuffled passes over ``data`` as that takes (the last pass cut short), reported as one
    epoch record whose ``n_train`` counts the images trained on, repeats included.

    With ``subsets``, member i trains on the images ``subsets[i]`` of ``data`` alone (its own draw):
    its batches are shuffled passes over them, as over a dataset of that size.
    """
    device = data.images.device
    runs = [MemberRun([]) for _ in range(len(members))]
    alive = list(range(len(members)))
    step = 0
    epochs = 1 if steps is not None else epochs
    for epoch in range(1, epochs + 1):
        # (steps, N, batch) indices: each member's own permutation, split into the same batch sizes
        tally = _EpochTally(alive, list(zip(*(own_batches(data, subsets[i] if subsets else None, batch_size,
                                                          generators[i], steps) for i in alive))))
        n_started, n_batches = len(alive), len(tally.batches)
        start, paused = synchronized_now(device), 0.0
        progress = tqdm(range(n_batches), desc=f"epoch {epoch}/{epochs}", leave=False, disable=not sys.stdout.isatty())
        for batch in progress:
            losses, logits, labels = members.step(data, torch.stack(tally.batches[batch]))
            step += 1
            tally.add(losses, logits, labels)
            if batch % log_every == 0 or batch == n_batches - 1:
                diverged = tally.diverged(max_loss)
                for j in diverged:
                    runs[alive[j]].diverged = divergence_message(tally.worst_loss[j].item(), max_loss, epoch, batch)
                if diverged:
                    kept = [j for j in range(len(alive)) if j not in diverged]
                    if not kept:  # every member diverged: nothing left to train
                        members.write_back()
                        return runs
                    members.keep(kept)
                    losses = losses[kept]
                    tally.keep(kept)
                    alive = tally.alive
            if batch % log_every == 0:  # the seeds log batch 0, 400, 800, ...
                log({i: {"kind": "batch", "epoch": epoch, "epochs": epochs, "batch": batch, "batches": n_batches,
                         "loss": loss} for i, loss in zip(alive, losses.tolist())})
            if observe is not None and observe_every and step % observe_every == 0:
                pause = synchronized_now(device)
                members.write_back()
                observe(step, alive)
                paused += synchronized_now(device) - pause
        seconds = (synchronized_now(device) - start - paused) / n_started
        records = tally.epoch_records(epoch, epochs, seconds)
        for i, record in records.items():
            runs[i].epoch_records.append(record)
        log(records)
    members.write_back()
    return runs


def member_batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device | str,
                   steps: int | None = None) -> tuple[torch.Tensor, ...]:
    """One member's batches of an epoch: one shuffled pass over ``n`` images; with ``steps``, that
    many batches, from successive passes (each pass's last batch may be short, as a DataLoader's is)."""
    if steps is None:
        return shuffled_batches(n, batch_size, generator, device)
    batches = ()
    while len(batches) < steps:
        batches += shuffled_batches(n, batch_size, generator, device)
    return batches[:steps]


def own_batches(data: Split, subset: torch.Tensor | None, batch_size: int, generator: torch.Generator,
                steps: int | None) -> tuple[torch.Tensor, ...]:
    """A member's batches over ``data``, or over its own ``subset`` of it (indices into ``data``)."""
    if subset is None:
        return member_batches(len(data), batch_size, generator, data.images.device, steps)
    subset = subset.to(data.images.device)
    return tuple(subset[batch] for batch in member_batches(len(subset), batch_size, generator, data.images.device, steps))


class _EpochTally:
    """What an epoch accumulates for the members still training: row j is member ``alive[j]``."""

    def __init__(self, alive: list[int], batches: list[tuple[torch.Tensor, ...]]):
        device = batches[0][0].device
        self.alive, self.batches = alive, batches  # batches: per step, each member's indices
        self.batch_losses: list[torch.Tensor] = []   # per step, (members,)
        self.correct = torch.zeros(len(alive), dtype=torch.long, device=device)
        self.worst_loss = torch.zeros(len(alive), device=device)  # torch.maximum keeps a NaN

    def add(self, losses: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.batch_losses.append(losses)
        self.correct += (logits.argmax(dim=2) == labels).sum(dim=1)
        self.worst_loss = torch.maximum(self.worst_loss, losses)

    def diverged(self, max_loss: float) -> list[int]:
        """The rows whose worst loss so far is above ``max_loss``, or NaN."""
        return [j for j, worst in enumerate(self.worst_loss.tolist()) if not worst <= max_loss]

    def keep(self, rows: list[int]) -> None:
        """Drop every row not in ``rows``, from what has been tallied and from the batches to come."""
        index = torch.tensor(rows, device=self.correct.device)
        self.alive = [self.alive[j] for j in rows]
        self.batches = [tuple(step[j] for j in rows) for step in self.batches]
        self.batch_losses = [losses[index] for losses in self.batch_losses]
        self.correct, self.worst_loss = self.correct[index], self.worst_loss[index]

    def epoch_records(self, epoch: int, epochs: int, seconds: float) -> dict[int, dict]:
        """Each member's epoch record."""
        losses = torch.stack(self.batch_losses, dim=1)  # (members, steps)
        batch_sizes = torch.tensor([len(step[0]) for step in self.batches], device=losses.device)
        n_train = int(batch_sizes.sum())  # the images trained on: len(data) for a whole pass
        mean_losses = [total / n_train for total in (losses * batch_sizes).sum(dim=1).tolist()]  # in float64
        return {i: {"kind": "epoch", "epoch": epoch, "epochs": epochs, "loss": mean_losses[j],
                    "train_accuracy": 100.0 * self.correct[j].item() / n_train, "n_train": n_train,
                    "seconds": seconds, "batch_losses": losses[j].tolist()}
                for j, i in enumerate(self.alive)}


def divergence_message(worst_loss: float, max_loss: float, epoch: int, batch: int) -> str:
    return f"a batch loss reached {worst_loss:.4g} (max_loss {max_loss:g}) by epoch {epoch}, batch {batch}"


def evaluate(model: nn.Module, data: Split) -> Accuracy:
    """Accuracy over every image of ``data``, not a sample of it."""
    return accuracy(predict(model, data.images), data.labels)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> Accuracy:
    hits = logits.argmax(dim=1) == labels
    return Accuracy(int(hits.sum()), len(labels), hits.cpu())


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The logits for every image, in eval mode; the same batches each call, so the same numbers."""
    model.eval()
    return torch.cat([model(images[i:i + EVAL_BATCH_SIZE]) for i in range(0, len(images), EVAL_BATCH_SIZE)])


def use_deterministic_algorithms() -> None:
    """Make CUDA runs repeatable too (CPU runs already are, on one machine and thread count).

    cuBLAS needs a fixed workspace for deterministic matmuls; the variable is read when cuBLAS
    starts, so this must run before the first CUDA matmul.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)


def synchronized_now(device: torch.device) -> float:
    """Wall-clock seconds once every queued kernel on ``device`` has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
