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
- Members that share a frozen first layer and a batch order (every rate of a seed in a rate grid)
  gather their batch once and compute the first layer's products once per group (``SharedInput``).
"""

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from loradora.adam import FusedAdam, MemberAdam
from loradora.adapters import (DoRALinear, LoRALinear, applies_dropout, dora_forward, dora_output, dora_row_norm,
                               dora_row_norm_expanded, linear, lora_forward, lora_output)
from loradora.data import Split
from loradora.training import MemberRun, OneModel, Step, products_in, train_members, widened
from loradora.variants import ONE_RATE, PartRates

NORMS = ("direct", "expanded")
# The expanded norm, measured per member on the 2-core CPU (full epochs, rank 4,
# benchmarks/population_speed.py): 1.07x faster than the direct one for a single model and 1.55x at
# N = 20 (0.291 s against 0.451 s), where writing and re-reading N (in, out) matrices every step is
# memory traffic the batched matmuls do not have. DoRA then costs 1.27x LoRA per member.
DEFAULT_NORM = "expanded"
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

    def shared_forward(self, x: torch.Tensor, shared: "SharedInput") -> torch.Tensor:
        return shared.base(x, with_bias=True)

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
        self.lora_A = nn.Parameter(torch.stack([_pad(a.lora_A.detach().t(), 1, rank) for a in adapters]),
                                   requires_grad=_trains(adapters, "lora_A"))
        self.lora_B = nn.Parameter(torch.stack([_pad(a.lora_B.detach().t(), 0, rank) for a in adapters]),
                                   requires_grad=_trains(adapters, "lora_B"))
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

    def shared_forward(self, x: torch.Tensor, shared: "SharedInput") -> torch.Tensor:
        return lora_output(shared.base(x, with_bias=True), shared.down(x, self.A), self.B, self.scaling)

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
        self.magnitude = nn.Parameter(torch.stack([adapter.magnitude.detach() for adapter in adapters]),
                                      requires_grad=_trains(adapters, "magnitude"))
        self.register_buffer("base_norm_sq", self.base.weight.detach().square().sum(dim=1, keepdim=True))

    def weight_norm(self) -> torch.Tensor:
        """||W0 + s*B@A|| per output row, (N, out)."""
        if self.norm == "direct":
            return dora_row_norm(self.weight, self.A, self.B, self.scaling, self.detach_norm)
        return dora_row_norm_expanded(self.weight, self.base_norm_sq, self.A, self.B, self.scaling, self.detach_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dora_forward(x, self.weight, self.base.bias, self.A, self.B, self.scaling, self.magnitude,
                            self.weight_norm(), self.dropped(x))

    def shared_forward(self, x: torch.Tensor, shared: "SharedInput") -> torch.Tensor:
        return dora_output(shared.base(x, with_bias=False), shared.down(x, self.A), self.B, self.scaling,
                           self.base.bias, self.magnitude, self.weight_norm())

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

    def forward(self, x: torch.Tensor, shared: "SharedInput | None" = None) -> torch.Tensor:
        """(N, batch, in) to (N, batch, out); with ``shared``, x is (groups, batch, in): one batch per
        group of members that share the first layer's frozen base and their batch order."""
        if shared is None:
            return self.layers(x)
        return self.layers[1:](self.layers[0].shared_forward(x, shared))

    def write_back(self) -> None:
        """Copy every member's weights, frozen ones included, back into its own modules."""
        for i, stacked in enumerate(self.layers):
            if hasattr(stacked, "write_back"):
                stacked.write_back([_layers(member)[i] for member in self.members])

    def __len__(self) -> int:
        return len(self.members)


@dataclass
class SharedInput:
    """Members that see the same batches through the same frozen first layer, grouped, so that
    their batch is gathered once and the first layer's products with it are computed once.

    Members of one seed share the seed's base and its batch order in a rate grid, the ``@shared``
    reruns and a rank sweep: the frozen product x @ W0^T + b, three quarters of the MLP's weights,
    is then the same for every member of a group, and is computed for one (``base``). Each member's
    A x is one wider product per group, x @ [A_1; A_2; ...]^T (``down``), which reads x once where
    a product per member read it k times. The same products, done once: exact up to the order of
    the sums in A x (another matrix shape, so another blocking of its 784-term sums).
    """
    leaders: torch.Tensor  # (groups,): one member per group, whose batch is gathered
    group: torch.Tensor    # (N,): each member's group
    slot: torch.Tensor     # (N,): its place in the group
    size: int              # members in the largest group
    weight: torch.Tensor   # (groups, out, in): the groups' frozen W0
    bias: torch.Tensor | None  # (groups, 1, out)

    @classmethod
    def find(cls, population: "Population", orders: Sequence[Hashable]) -> "SharedInput | None":
        """The groups of ``population`` whose members have the same key in ``orders`` (their batch
        order: the seed of its generator) and the same frozen first layer, bit for bit; None when
        no two members share, or the first layer trains or draws dropout masks per member."""
        first = population.layers[0]
        linear_part = first.base if isinstance(first, StackedLoRA) else first
        if not isinstance(linear_part, StackedLinear) or linear_part.weight.requires_grad or getattr(first, "dropout", 0):
            return None
        weight, bias = linear_part.weight.detach(), linear_part.bias
        leaders, group, slot, sizes = [], [], [], []
        for n, order in enumerate(orders):
            same = (g for g, leader in enumerate(leaders) if orders[leader] == order
                    and torch.equal(weight[leader], weight[n]) and (bias is None or torch.equal(bias[leader], bias[n])))
            g = next(same, None)
            if g is None:
                g = len(leaders)
                leaders.append(n)
                sizes.append(0)
            group.append(g)
            slot.append(sizes[g])
            sizes[g] += 1
        if len(leaders) == len(orders):
            return None
        device = weight.device
        leaders_t = torch.tensor(leaders, device=device)
        return cls(leaders_t, torch.tensor(group, device=device), torch.tensor(slot, device=device), max(sizes),
                   weight[leaders_t].mT, None if bias is None else bias.detach()[leaders_t])

    def __len__(self) -> int:
        return len(self.leaders)

    def spread(self, tensor: torch.Tensor) -> torch.Tensor:
        """A tensor with a row per group, as a row per member."""
        return tensor.index_select(0, self.group)

    def base(self, x: torch.Tensor, with_bias: bool) -> torch.Tensor:
        """W0 x (+ b) per member, from one product per group: (N, batch, out)."""
        return self.spread(linear(x, self.weight, self.bias if with_bias else None))

    def down(self, x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        """A x per member, (N, batch, rank), from one product per group with its members' A stacked
        (zero rows where a group has fewer members than the largest)."""
        groups, rank = len(self), A.shape[-2]
        stacked = A.new_zeros(groups, self.size, *A.shape[1:]).index_put((self.group, self.slot), A)
        products = linear(x, stacked.flatten(1, 2))  # (groups, batch, size * rank)
        return products.unflatten(2, (self.size, rank)).transpose(1, 2)[self.group, self.slot]


def _layers(model: nn.Module) -> list[nn.Module]:
    if not isinstance(getattr(model, "layers", None), nn.Sequential):
        raise TypeError(f"a population stacks models whose .layers is an nn.Sequential, like MLP; "
                        f"got {type(model).__name__}")
    return list(model.layers)


def _stack(column: list[nn.Module], norm: str) -> nn.Module:
    kind = _same([type(layer) for layer in column], "layer type")
    if issubclass(kind, DoRALinear):  # DoRA, or one of its parts alone (adapters.DoRAMagnitude, DoRADirection)
        return StackedDoRA(column, norm)
    if issubclass(kind, LoRALinear):
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


def _trains(adapters: Sequence[LoRALinear], parameter: str) -> bool:
    """Whether the members train ``parameter`` (DoRA's parts alone freeze some); all alike."""
    return _same([getattr(adapter, parameter).requires_grad for adapter in adapters], f"{parameter}.requires_grad")


def _same(values: list, what: str):
    if any(value != values[0] for value in values):
        raise ValueError(f"the members of a population differ in {what}: {values}")
    return values[0]


def member_step(models: Sequence[nn.Module], lrs: Sequence[float], orders: Sequence[Hashable] | None = None,
                precision: str = "fp32", parts: Sequence[PartRates] | None = None) -> Step:
    """How ``models`` train at once: one model alone, as itself (``training.OneModel``: a stack of
    one is slower, and would change its float32 bits); more, stacked as a population, sharing
    their first layer's work where ``orders`` (each member's batch order) allow (``SharedInput``).
    ``precision``: see ``training.products_in``. ``parts``: each member's multipliers for B and m."""
    if len(models) == 1:
        return OneModel(models[0], lrs[0], precision, None if orders is None else orders[0],
                        parts[0] if parts else ONE_RATE)
    return PopulationStep(Population(models), list(lrs), orders, precision, parts)


def train_population(population: Population, data: Split, *, epochs: int, batch_size: int,
                     lr: float | Sequence[float], generators: Sequence[torch.Generator],
                     log: Callable[[dict[int, dict]], None], log_every: int, max_loss: float = math.inf,
                     observe: Callable[[int, list[int]], None] | None = None,
                     observe_every: int | None = None, orders: Sequence[Hashable] | None = None,
                     precision: str = "fp32", parts: Sequence[PartRates] | None = None) -> list[MemberRun]:
    """``training.train_members`` for ``population``, at one rate ``lr`` or one per member: member i's
    records are those ``training.train`` would make for it alone, except that an epoch's
    ``seconds`` is the population's divided by its members. ``orders``, ``precision``: see
    ``PopulationStep``."""
    lrs = list(lr) if isinstance(lr, Sequence) else [lr] * len(population)
    return train_members(PopulationStep(population, lrs, orders, precision, parts), data, epochs=epochs, batch_size=batch_size,
                         generators=generators, log=log, log_every=log_every, max_loss=max_loss, observe=observe,
                         observe_every=observe_every)


class PopulationStep:
    """Adam over the population's stacked parameters, and the step that uses it (``training.Step``).

    One rate for all members: the fused Adam ``training.train`` uses (elementwise, so one Adam over
    stacked tensors is N Adams). A rate per member (a learning-rate grid trained as one
    population): ``MemberAdam``, the same update with the rate broadcast over the member dimension.

    ``orders`` names each member's batch order (``jobs.train``: the seed of its generator);
    members with the same order and the same frozen first layer share its work (``SharedInput``).
    ``precision``: see ``training.products_in``.
    """

    def __init__(self, population: Population, lrs: list[float], orders: Sequence[Hashable] | None = None,
                 precision: str = "fp32", parts: Sequence[PartRates] | None = None):
        self.population, self.lrs, self.orders, self.precision = population, lrs, orders, precision
        self.parts = list(parts) if parts else [ONE_RATE] * len(lrs)
        self.optimizer = self._optimizer()
        self.shared = SharedInput.find(population, orders) if orders is not None else None
        population.train()

    def _optimizer(self):
        trainable = [(name, p) for name, p in self.population.named_parameters() if p.requires_grad]
        parameters = [p for _, p in trainable]
        if len(set(self.lrs)) == 1 and len(set(self.parts)) == 1:
            return FusedAdam(parameters, lr=self.lrs[0], scales=[self.parts[0].of(name) for name, _ in trainable])
        return MemberAdam(parameters, self.lrs, [[part.of(name) for part in self.parts] for name, _ in trainable])

    def __len__(self) -> int:
        return len(self.population)

    def step(self, data: Split, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimiser step on each member's batch; each member's loss (N,), the logits and labels."""
        rows = data.rows(self.orders)  # None, unless a teacher labels each seed's images its own way
        if self.shared is None:
            images, labels = data.batch(indices, rows)
        else:  # one batch per group: its members draw the same indices (and have the same seed)
            leaders = self.shared.leaders
            images, labels = data.batch(indices[leaders], None if rows is None else rows[leaders])
            labels = self.shared.spread(labels)
        with products_in(self.precision, images.device):
            logits = self.population(images, self.shared)
        n, batch, classes = logits.shape
        # mean over each member's batch, as F.cross_entropy does for one model; the sum over members
        # gives each member's parameters exactly the gradient of its own loss
        losses = F.cross_entropy(widened(logits).reshape(n * batch, classes), labels.reshape(-1),
                                 reduction="none").view(n, batch).mean(dim=1)
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        self.optimizer.step()
        return losses.detach(), logits.detach(), labels

    def write_back(self) -> None:
        self.population.write_back()

    def keep(self, rows: list[int]) -> None:
        """Drop every member not in ``rows``: write all back, restack the kept ones, carry their Adam state."""
        old, old_optimizer = self.population, self.optimizer
        old.write_back()
        old_parameters = [p for p in old.parameters() if p.requires_grad]
        self.population = Population([old.members[j] for j in rows], norm=_norm(old))
        self.lrs, self.parts = [self.lrs[j] for j in rows], [self.parts[j] for j in rows]
        self.optimizer = self._optimizer()
        if self.orders is not None:
            self.orders = [self.orders[j] for j in rows]
            self.shared = SharedInput.find(self.population, self.orders)
        new_parameters = [p for p in self.population.parameters() if p.requires_grad]
        index = torch.tensor(rows, device=old_parameters[0].device)
        for old_p, new_p in zip(old_parameters, new_parameters):
            if old_p in old_optimizer.state:  # "step" is shared by all members; the moments are per member
                self.optimizer.state[new_p] = {key: value.clone() if key == "step" else value[index].clone()
                                               for key, value in old_optimizer.state[old_p].items()}
        self.population.train()


def _norm(population: Population) -> str:
    return next((layer.norm for layer in population.layers if isinstance(layer, StackedDoRA)), DEFAULT_NORM)
