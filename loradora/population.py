"""Population training: N independent copies of the MLP trained at once with batched matrix products.

At batch 64 one MLP leaves most of the hardware idle (on 2 CPU cores a pretraining epoch reaches
about 55 GFLOP/s where a large matrix product reaches about 90; on a GPU it is bound by kernel
launches). Stacking N models along a leading dimension turns each layer's N small matmuls into one
``torch.bmm``, so a phase of many seeds costs a fraction of training them one after another.

A population is made *from* ordinary models and written back *into* them: ``LoRALinear`` and
``DoRALinear`` initialise every member (``methods.prepare``), the stacked layers below compute with
the same functions as they do (``adapters.lora_forward``, ``dora_forward``: the maths is written
once, batched over a leading member dimension), tests hold each member to training it alone (to
1e-12 in float64), and after training each member is unstacked into its own modules, where merge,
save, PEFT export, the dM/dD tracker and the frozen-weight check run as usual.

Layout, from the measured prototype (issue 9):
- Weights are stored transposed, (N, in, out), so ``baddbmm(bias, x, weight)`` needs no transpose
  and the weight gradient is written in place (1.15x faster pretraining than (N, out, in)).
- Members of one population may have different ranks: A and B are zero-padded to the largest
  (a "rank bucket"). The padding stays exactly zero with no mask: B starts at zero, so the padded
  columns of x @ A are zero and B's padded rows get zero gradient, and A's padded columns get
  B's zero rows as gradient; Adam moves a parameter by 0 when its gradient has always been 0.
  The scaling s becomes a per-member (N, 1, 1) tensor, since alpha and rank may differ.
- Each member keeps its own init, batch order (its own generator) and Adam state (Adam is
  elementwise, so one fused Adam over the stacked tensors is N independent Adams).
"""

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from loradora.adam import FusedAdam, MemberAdam
from loradora.adapters import (DoRALinear, LoRALinear, applies_dropout, dora_forward, dora_row_norm,
                               dora_row_norm_expanded, linear, lora_forward)
from loradora.data import Split, shuffled_batches
from loradora.training import divergence_message, synchronized_now

NORMS = ("direct", "expanded")
# The expanded norm, measured per member on the 2-core CPU (full epochs, rank 4,
# benchmarks/population_speed.py): 1.07x faster than the direct one for a single model and 1.55x at
# N = 20 (0.291 s against 0.451 s), where writing and re-reading N (in, out) matrices every step is
# memory traffic the batched matmuls do not have. DoRA then costs 1.27x LoRA per member.
DEFAULT_NORM = "expanded"
# experiment.population: auto trains at most this many models at once. On the 2-core CPU the per-model
# speed-up stops growing between 20 and 50 members (measured: LoRA 4.35x at 20, 4.45x at 32, 4.43x
# at 50; pretraining 2.53x, 2.61x, 2.54x). The GPU figure is a guess, not measured: a GPU runs one
# such MLP far below its capacity, bound by kernel launches, and keeps gaining into the hundreds.
AUTO_LIMIT = {"cpu": 32, "cuda": 1024}
# A rank bucket pads every member to its largest rank; ranks join a bucket while the padded work
# stays within this factor of the unpadded work.
PADDING_TOLERANCE = 1.25


def population_chunks(items: Sequence, setting: int | str, device: torch.device) -> list[list]:
    """``items`` (a phase's members) split into populations of at most ``setting`` members (``auto``:
    ``AUTO_LIMIT`` for the device), as evenly as that allows: 40 at a limit of 32 gives 20 + 20."""
    if not items:
        return []
    limit = AUTO_LIMIT[device.type] if setting == "auto" else setting
    n_chunks = math.ceil(len(items) / limit)
    size = math.ceil(len(items) / n_chunks)
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def rank_buckets(ranks: Sequence[int], layer_sizes: Sequence[int]) -> list[list[int]]:
    """Ranks grouped so that padding each to its bucket's largest costs at most ``PADDING_TOLERANCE``.

    The cost of a member of rank r, per example, is that of its layers: in*out for the base matmul
    plus r*(in + out) for the adapter. 1, 2, 4, 8, 16, 32, 64 on the 784-128-256-10 MLP gives
    [1, 2, 4, 8, 16, 32] and [64].
    """
    pairs = list(zip(layer_sizes[:-1], layer_sizes[1:]))
    base, per_rank = sum(i * o for i, o in pairs), sum(i + o for i, o in pairs)
    buckets: list[list[int]] = []
    for rank in sorted(ranks):
        bucket = buckets[-1] if buckets else []
        padded = (len(bucket) + 1) * (base + rank * per_rank)
        unpadded = sum(base + r * per_rank for r in [*bucket, rank])
        if bucket and padded <= PADDING_TOLERANCE * unpadded:
            bucket.append(rank)
        else:
            buckets.append([rank])
    return buckets


class StackedLinear(nn.Module):
    """N ``nn.Linear`` layers: y[n] = x[n] @ W[n]^T + b[n], weights stored as (N, in, out)."""

    def __init__(self, layers: Sequence[nn.Linear]):
        super().__init__()
        trainable = _same([layer.weight.requires_grad for layer in layers], "weight.requires_grad")
        self.weight = nn.Parameter(torch.stack([layer.weight.detach().t() for layer in layers]),
                                   requires_grad=trainable)
        has_bias = _same([layer.bias is not None for layer in layers], "having a bias")
        self.bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]).unsqueeze(1),
                                 requires_grad=trainable) if has_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight.mT, self.bias)  # the (N, out, in) view: baddbmm on the storage

    @torch.no_grad()
    def write_back(self, layers: Sequence[nn.Linear]) -> None:
        for i, layer in enumerate(layers):
            layer.weight.copy_(self.weight[i].t())
            if self.bias is not None:
                layer.bias.copy_(self.bias[i, 0])


class StackedLoRA(nn.Module):
    """N ``LoRALinear`` layers, ranks zero-padded to the largest, computed by ``adapters.lora_forward``.

    A is stored as (N, in, rank) and B as (N, rank, out), the transposes of ``lora_A`` and ``lora_B``
    (as the base weight is, ``StackedLinear``); the maths takes them as (N, rank, in) and
    (N, out, rank) views: ``A``, ``B``.
    """

    def __init__(self, adapters: Sequence[LoRALinear]):
        super().__init__()
        self.base = StackedLinear([adapter.base for adapter in adapters])
        self.ranks = [adapter.rank for adapter in adapters]
        rank = max(self.ranks)
        self.lora_A = nn.Parameter(torch.stack([_pad(a.lora_A.detach().t(), 1, rank) for a in adapters]))
        self.lora_B = nn.Parameter(torch.stack([_pad(a.lora_B.detach().t(), 0, rank) for a in adapters]))
        scalings = torch.tensor([adapter.scaling for adapter in adapters], dtype=self.lora_A.dtype)
        self.register_buffer("scaling", scalings.to(self.lora_A.device).view(-1, 1, 1))
        # dropout on (N, batch, in) draws every member's mask independently, as N layers would
        self.dropout = _same([adapter.dropout for adapter in adapters], "dropout")
        self.lora_dropout = nn.Dropout(self.dropout)

    @property
    def weight(self) -> torch.Tensor:
        """W0 as (N, out, in), a view."""
        return self.base.weight.mT

    @property
    def A(self) -> torch.Tensor:
        return self.lora_A.mT

    @property
    def B(self) -> torch.Tensor:
        return self.lora_B.mT

    def dropped(self, x: torch.Tensor) -> torch.Tensor | None:
        return self.lora_dropout(x) if applies_dropout(self) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lora_forward(x, self.weight, self.base.bias, self.A, self.B, self.scaling, self.dropped(x))

    @torch.no_grad()
    def write_back(self, adapters: Sequence[LoRALinear]) -> None:
        """Copy each member into its adapter; the padding must still be exactly zero."""
        self.base.write_back([adapter.base for adapter in adapters])
        for i, (adapter, rank) in enumerate(zip(adapters, self.ranks)):
            if self.lora_A[i, :, rank:].any() or self.lora_B[i, rank:].any():
                raise RuntimeError(f"member {i}: the zero padding of its rank-{rank} adapter moved")
            adapter.lora_A.copy_(self.lora_A[i, :, :rank].t())
            adapter.lora_B.copy_(self.lora_B[i, :rank].t())


class StackedDoRA(StackedLoRA):
    """N ``DoRALinear`` layers, computed by ``adapters.dora_forward``; the magnitude m is (N, out).

    ``norm`` chooses how the row norms are computed, both exact: "direct" forms V = W0 + s*B@A
    (``adapters.dora_row_norm``), as ``DoRALinear`` does; "expanded" (``dora_row_norm_expanded``)
    does not, with ||W0||^2 cached.
    """

    def __init__(self, adapters: Sequence[DoRALinear], norm: str = DEFAULT_NORM):
        super().__init__(adapters)
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; expected one of {', '.join(NORMS)}")
        self.norm = norm
        self.detach_norm = _same([adapter.detach_norm for adapter in adapters], "detach_norm")
        self.magnitude = nn.Parameter(torch.stack([adapter.magnitude.detach() for adapter in adapters]))
        self.register_buffer("base_norm_sq", self.base.weight.detach().square().sum(dim=1, keepdim=True))

    def weight_norm(self) -> torch.Tensor:
        """||W0 + s*B@A|| per output row, (N, out)."""
        if self.norm == "direct":
            return dora_row_norm(self.weight, self.A, self.B, self.scaling, self.detach_norm)
        return dora_row_norm_expanded(self.weight, self.base_norm_sq, self.A, self.B, self.scaling, self.detach_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dora_forward(x, self.weight, self.base.bias, self.A, self.B, self.scaling, self.magnitude,
                            self.weight_norm(), self.dropped(x))

    @torch.no_grad()
    def write_back(self, adapters: Sequence[DoRALinear]) -> None:
        super().write_back(adapters)
        for i, adapter in enumerate(adapters):
            adapter.magnitude.copy_(self.magnitude[i])


class Population(nn.Module):
    """N copies of one ``nn.Sequential`` architecture (the MLP's ``layers``), stacked layer by layer.

    Every member must have the same layer types, shapes and trainable parameters; adapters may
    differ in rank, alpha and scaling. Input (N, batch, in), output (N, batch, out).
    """

    def __init__(self, members: Sequence[nn.Module], norm: str = DEFAULT_NORM):
        super().__init__()
        self.members = list(members)
        columns = zip(*(_layers(member) for member in self.members))
        self.layers = nn.Sequential(*(_stack(list(column), norm) for column in columns))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def write_back(self) -> None:
        """Copy every member's weights, frozen ones included, back into its own modules."""
        for i, stacked in enumerate(self.layers):
            if hasattr(stacked, "write_back"):
                stacked.write_back([_layers(member)[i] for member in self.members])

    def __len__(self) -> int:
        return len(self.members)


def _layers(model: nn.Module) -> list[nn.Module]:
    if not isinstance(getattr(model, "layers", None), nn.Sequential):
        raise TypeError(f"a population stacks models whose .layers is an nn.Sequential, like MLP; "
                        f"got {type(model).__name__}")
    return list(model.layers)


def _stack(column: list[nn.Module], norm: str) -> nn.Module:
    kind = _same([type(layer) for layer in column], "layer type")
    if kind is DoRALinear:
        return StackedDoRA(column, norm)
    if kind is LoRALinear:
        return StackedLoRA(column)
    if kind is nn.Linear:
        return StackedLinear(column)
    if kind is nn.ReLU:
        return nn.ReLU()
    raise TypeError(f"no stacked form for {kind.__name__}")


def _pad(tensor: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``tensor`` zero-padded along ``dim`` to ``size``."""
    padding = [0, 0] * (tensor.dim() - 1 - dim) + [0, size - tensor.shape[dim]]
    return F.pad(tensor, padding)


def _same(values: list, what: str):
    if any(value != values[0] for value in values):
        raise ValueError(f"the members of a population differ in {what}: {values}")
    return values[0]


@dataclass
class MemberRun:
    """What training did to one member: its epoch records (as ``train`` returns them), or why it stopped."""
    epoch_records: list[dict]
    diverged: str | None = None  # the divergence message, when its loss went non-finite or above max_loss


def train_population(population: Population, data: Split, *, epochs: int, batch_size: int,
                     lr: float | Sequence[float],
                     generators: Sequence[torch.Generator], log: Callable[[dict[int, dict]], None],
                     log_every: int, max_loss: float = math.inf,
                     observe: Callable[[int, list[int]], None] | None = None,
                     observe_every: int | None = None) -> list[MemberRun]:
    """Adam on each member's own cross-entropy, every member at once; one ``MemberRun`` per member.

    The counterpart of ``training.train`` for a population: member i draws its batch order from
    ``generators[i]``, and its records are those ``train`` would make for it alone, except that an
    epoch's ``seconds`` is the population's divided by its members (the per-member cost). ``log``
    receives {member index: record} at every ``log_every``-th batch and at each epoch's end. A
    member whose worst loss so far is non-finite or above ``max_loss`` at a logged batch is
    diverged: it is taken out of the population (its weights as they were) and the others go on.
    ``lr`` is one rate for every member or one per member. ``observe(step, alive)`` runs after
    every ``observe_every``-th step with the members written back into their modules; ``alive``
    lists the indices still training. The members' modules hold their trained weights on return.
    """
    device = data.images.device
    runs = [MemberRun([]) for _ in range(len(population))]
    alive = list(range(len(population)))
    trainer = _Trainer(population, list(lr) if isinstance(lr, Sequence) else [lr] * len(population))
    step = 0
    for epoch in range(1, epochs + 1):
        # (steps, N, batch) indices: each member's own permutation, split into the same batch sizes
        tally = _EpochTally(alive, list(zip(*(shuffled_batches(len(data), batch_size, generators[i], device)
                                             for i in alive))))
        n_started, n_batches = len(alive), len(tally.batches)
        start, paused = synchronized_now(device), 0.0
        progress = tqdm(range(n_batches), desc=f"epoch {epoch}/{epochs}", leave=False, disable=not sys.stdout.isatty())
        for batch in progress:
            indices = torch.stack(tally.batches[batch])
            images, labels = data.images[indices], data.labels[indices]
            losses, logits = trainer.step(images, labels)
            step += 1
            tally.add(losses, logits, labels)
            if batch % log_every == 0 or batch == n_batches - 1:
                diverged = tally.diverged(max_loss)
                for j in diverged:
                    runs[alive[j]].diverged = divergence_message(tally.worst_loss[j].item(), max_loss, epoch, batch)
                if diverged:
                    kept = [j for j in range(len(alive)) if j not in diverged]
                    if not kept:  # every member diverged: nothing left to train
                        population.write_back()
                        return runs
                    population, losses = trainer.keep(kept), losses[kept]
                    tally.keep(kept)
                    alive = tally.alive
            if batch % log_every == 0:
                log({i: {"kind": "batch", "epoch": epoch, "epochs": epochs, "batch": batch, "batches": n_batches,
                         "loss": loss} for i, loss in zip(alive, losses.tolist())})
            if observe is not None and observe_every and step % observe_every == 0:
                pause = synchronized_now(device)
                population.write_back()
                observe(step, alive)
                paused += synchronized_now(device) - pause
        seconds = (synchronized_now(device) - start - paused) / n_started
        records = tally.epoch_records(epoch, epochs, len(data), seconds)
        for i, record in records.items():
            runs[i].epoch_records.append(record)
        log(records)
    population.write_back()
    return runs


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

    def epoch_records(self, epoch: int, epochs: int, n_train: int, seconds: float) -> dict[int, dict]:
        """Each member's epoch record, as ``training.train`` makes it for one model."""
        losses = torch.stack(self.batch_losses, dim=1)  # (members, steps)
        batch_sizes = torch.tensor([len(step[0]) for step in self.batches], device=losses.device)
        mean_losses = ((losses * batch_sizes).sum(dim=1) / n_train).tolist()
        return {i: {"kind": "epoch", "epoch": epoch, "epochs": epochs, "loss": mean_losses[j],
                    "train_accuracy": 100.0 * self.correct[j].item() / n_train, "n_train": n_train,
                    "seconds": seconds, "batch_losses": losses[j].tolist()}
                for j, i in enumerate(self.alive)}


class _Trainer:
    """Adam over the population's stacked parameters, and the step that uses it.

    One rate for all members: the fused Adam ``training.train`` uses (elementwise, so one Adam over
    stacked tensors is N Adams). A rate per member (a learning-rate grid trained as one
    population): ``MemberAdam``, the same update with the rate broadcast over the member dimension.
    """

    def __init__(self, population: Population, lrs: list[float]):
        self.population, self.lrs = population, lrs
        self.optimizer = self._optimizer()
        population.train()

    def _optimizer(self):
        parameters = [p for p in self.population.parameters() if p.requires_grad]
        if len(set(self.lrs)) == 1:
            return FusedAdam(parameters, lr=self.lrs[0])
        return MemberAdam(parameters, self.lrs)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on (N, batch, 784) images; returns each member's loss (N,) and the logits."""
        logits = self.population(images)
        n, batch, classes = logits.shape
        # mean over each member's batch, as F.cross_entropy does for one model; the sum over members
        # gives each member's parameters exactly the gradient of its own loss
        losses = F.cross_entropy(logits.reshape(n * batch, classes), labels.reshape(-1),
                                 reduction="none").view(n, batch).mean(dim=1)
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        self.optimizer.step()
        return losses.detach(), logits.detach()

    def keep(self, rows: list[int]) -> Population:
        """Drop every member not in ``rows``: write all back, restack the kept ones, carry their Adam state."""
        old, old_optimizer = self.population, self.optimizer
        old.write_back()
        old_parameters = [p for p in old.parameters() if p.requires_grad]
        self.population = Population([old.members[j] for j in rows], norm=_norm(old))
        self.lrs = [self.lrs[j] for j in rows]
        self.optimizer = self._optimizer()
        new_parameters = [p for p in self.population.parameters() if p.requires_grad]
        index = torch.tensor(rows, device=old_parameters[0].device)
        for old_p, new_p in zip(old_parameters, new_parameters):
            if old_p in old_optimizer.state:  # "step" is shared by all members; the moments are per member
                self.optimizer.state[new_p] = {key: value.clone() if key == "step" else value[index].clone()
                                               for key, value in old_optimizer.state[old_p].items()}
        self.population.train()
        return self.population


def _norm(population: Population) -> str:
    return next((layer.norm for layer in population.layers if isinstance(layer, StackedDoRA)), DEFAULT_NORM)
