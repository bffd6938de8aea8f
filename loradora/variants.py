"""What a run fine-tunes (its *variants*: a method, at a rank when it is an adapter) and how they
are grouped into populations; plain data, free of torch, so the plan (loradora/plan.py) is too.
"""

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from loradora.choices import ADAPTER_METHODS, ADAPTER_SECTIONS, N_CLASSES, N_PIXELS, lora_scaling


@dataclass(frozen=True)
class Variant:
    """What one phase trains, as fields: code groups and pairs variants by them, never by their name."""
    method: str | None    # one of choices.METHODS; None for the pretraining and the untuned base
    adapter: dict = dataclasses.field(default_factory=dict, hash=False)  # rank, alpha, scaling,
    # dropout (and detach_norm) for the adapters; empty for the rest
    swept: bool = False   # one of experiment.ranks: the rank is part of the name
    rates: str = "tuned"  # "tuned": the run's own rate (chosen on validation, or finetune.lr);
    # "shared": the shared finetune.lr, beside tuned ones (RATE_FAMILIES)
    label: str | None = None  # the name of a phase that is no method: "pretrained", "no_finetune"

    @property
    def name(self) -> str:
        """Its key in summary.json and its label in the output: "lora", "lora_r8", "lora_r8@shared"."""
        if self.label is not None:
            return self.label
        name = f"{self.method}_r{self.adapter['rank']}" if self.swept else self.method
        return name if self.rates == "tuned" else f"{name}@{self.rates}"

    @property
    def rank(self) -> int | None:
        """As its results record it (``settings``): experiment.adapter_pairs pairs either by it."""
        return self.settings()["rank"]

    def at_shared_rate(self) -> "Variant":
        return dataclasses.replace(self, rates="shared")

    def settings(self) -> dict:
        """The MethodResult fields that say what was trained: method, rank, alpha, scaling, s, rates."""
        rates = None if self.method is None else self.rates
        if not self.adapter or self.method == "magnitude":  # B = 0: its rank and scaling change nothing
            return {"method": self.method, "rank": None, "alpha": None, "scaling": None, "s": None, "rates": rates}
        rank, alpha, scaling = self.adapter["rank"], self.adapter["alpha"], self.adapter["scaling"]
        return {"method": self.method, "rank": rank, "alpha": alpha, "scaling": scaling,
                "s": lora_scaling(rank, alpha, scaling), "rates": rates}


@dataclass(frozen=True)
class PartRates:
    """Multipliers of a member's learning rate for two parts of an adapter: B (LoRA+, Hayou et al.
    2024: B learns faster than A) and DoRA's magnitude m. A, and every other trainable weight, keep
    the rate itself. (1, 1): one rate for all, the paper's setting and PEFT's."""
    b: float = 1.0
    magnitude: float = 1.0

    def of(self, parameter_name: str) -> float:
        """The multiplier of a parameter, by its name (adapters.LoRALinear.lora_B, DoRALinear.magnitude,
        and their stacked forms in a population)."""
        leaf = parameter_name.rsplit(".", 1)[-1]
        return self.b if leaf == "lora_B" else self.magnitude if leaf == "magnitude" else 1.0

    @property
    def label(self) -> str:
        return f"λB={self.b:g},λm={self.magnitude:g}"


ONE_RATE = PartRates()
WITH_B = ("lora", "dora", "direction")  # the adapters with a B; of these, dora alone has a trained magnitude too


def part_rates(config, variant: "Variant") -> PartRates:
    """A variant's multipliers as configured (lora.b_lr_ratio; dora.b_lr_ratio, dora.magnitude_lr_ratio).
    The magnitude alone trains only m, so its multiplier would only rescale its rate, which is tuned
    itself: it keeps one rate. Full and head fine-tuning have no parts."""
    if variant.method not in WITH_B:
        return ONE_RATE
    section = config.lora if variant.method == "lora" else config.dora
    return PartRates(section.b_lr_ratio, getattr(section, "magnitude_lr_ratio", 1.0) if variant.method == "dora" else 1.0)


RATE_FAMILIES = ("tuned", "shared")
PRETRAINED = Variant(None, label="pretrained")     # the base: every weight trained on plain MNIST
NO_FINETUNE = Variant(None, label="no_finetune")   # that base scored on a shifted task, before fine-tuning


# Keys of the lora and dora sections that say how an adapter trains, not what it is: the member
# carries them (PartRates), the adapter's layers never see them.
TRAINING_KEYS = ("b_lr_ratio", "magnitude_lr_ratio")


def finetune_variants(config) -> list[Variant]:
    """``finetune.methods`` in order; with ``experiment.ranks``, each adapter at every rank
    (every adapter takes the rank, each keeps its own alpha and scaling). An adapter's settings are
    its config section's (``choices.ADAPTER_SECTIONS``: DoRA's parts alone take dora's); the
    magnitude alone has no rank to sweep (its B stays zero)."""
    ranks = config.experiment.ranks
    variants = []
    for method in config.finetune.methods:
        if method not in ADAPTER_METHODS:
            variants.append(Variant(method))
            continue
        settings = {key: value for key, value in dataclasses.asdict(getattr(config, ADAPTER_SECTIONS[method])).items()
                    if key not in TRAINING_KEYS}
        if ranks is None or method == "magnitude":
            variants.append(Variant(method, settings))
        else:
            variants += [Variant(method, {**settings, "rank": rank}, swept=True) for rank in ranks]
    return variants


def variant_groups(config) -> list[list[Variant]]:
    """The variants that can train as one population: each baseline alone, each adapter's ranks in
    buckets of similar cost (``rank_buckets``), in ``finetune_variants`` order otherwise."""
    layer_sizes = [N_PIXELS, *config.model.hidden_sizes, N_CLASSES]
    groups = []
    for _, variants in itertools.groupby(finetune_variants(config), key=lambda variant: variant.method):
        by_rank = {variant.adapter.get("rank"): variant for variant in variants}
        if len(by_rank) == 1:
            groups.append(list(by_rank.values()))
        else:
            groups += [[by_rank[rank] for rank in bucket] for bucket in rank_buckets(list(by_rank), layer_sizes)]
    return groups


# experiment.population: auto trains at most this many models at once. On the 2-core CPU the per-model
# speed-up stops growing between 20 and 50 members (measured: LoRA 4.35x at 20, 4.45x at 32, 4.43x
# at 50; pretraining 2.53x, 2.61x, 2.54x). The GPU figure is a guess, not measured: a GPU runs one
# such MLP far below its capacity, bound by kernel launches, and keeps gaining into the hundreds.
AUTO_LIMIT = {"cpu": 32, "cuda": 1024}
# A rank bucket pads every member to its largest rank; ranks join a bucket while the padded work
# stays within this factor of the unpadded work.
PADDING_TOLERANCE = 1.25


def population_chunks(items: Sequence, setting: int | str, device_type: str) -> list[list]:
    """``items`` (a phase's members) split into populations of at most ``setting`` members (``auto``:
    ``AUTO_LIMIT`` for the device type, "cpu" or "cuda"), as evenly as that allows: 40 at a limit
    of 32 gives 20 + 20."""
    if not items:
        return []
    limit = AUTO_LIMIT[device_type] if setting == "auto" else setting
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
