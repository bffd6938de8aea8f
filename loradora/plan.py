"""The experiment as a plan of jobs: from the config and the results so far, the populations that
must still train. Pure: no torch, no files, no clock; the same config and results give the same jobs.

A *job* is one population (loradora/population.py; one model alone is a population of one) of one
stage:

    pretrain   every seed's base, trained on MNIST (shared by every cell of a map)
    tune       a variant at each rate of experiment.lrs on the tuning seeds, scored on validation;
               with experiment.extend_grid, then a rate past the grid's edge where the best one is there
    finetune   every variant at its chosen rate (and at the shared finetune.lr) on the compared seeds

Each job has a *key*, built as the pretrained-base cache builds its own (loradora/cache.py): a hash
of the job's members and the settings that shape them, the digest of the code that trains them and
the torch version (``Stamp``). A run keeps each job's result under its key (loradora/jobs.py), so a
stopped run resumes with the jobs that have none (``Plan.ready``), and a map's cells, each a run
config of its own, share one plan: their pretraining is one set of jobs, and their other jobs are
ready side by side, for Ray to spread.

Which rates fine-tuning uses depends on the tuning jobs' validation accuracies, the only results
the plan reads (``Progress``).
"""

import dataclasses
import hashlib
import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from loradora.config import Config, to_dict
from loradora.variants import (ONE_RATE, PRETRAINED, WITH_B, PartRates, Variant, finetune_variants, part_rates,
                               population_chunks, variant_groups)

STAGES = ("pretrain", "tune", "finetune")
EXTEND_STEPS = 3  # experiment.extend_grid: at most this many rates past an edge (issue 19)

# key -> the validation accuracy of each member (a tune job; None where it diverged), or () for the
# other stages: the jobs that have a result
Progress = Mapping[str, Sequence[float | None]]


@dataclass(frozen=True)
class Stamp:
    """What, besides the config, decides a job's bits, and so is in its key."""
    code: str         # the digest of the sources that train and score (jobs.SOURCES)
    torch: str        # torch.__version__
    device_type: str  # "cpu" or "cuda": how many members a population takes (experiment.population: auto)


@dataclass(frozen=True)
class Member:
    """One model of a job: a variant (PRETRAINED for a base) of one seed, at one learning rate, with
    its parts' multipliers of it (B's and DoRA's magnitude's)."""
    variant: Variant
    seed: int
    lr: float
    parts: PartRates = ONE_RATE


@dataclass(frozen=True)
class Job:
    stage: str                  # one of STAGES
    cell: str | None            # the run (a map's cell: its name; a plain run: "") it serves; None: every cell
    members: tuple[Member, ...]
    key: str

    @property
    def seeds(self) -> list[int]:
        return [member.seed for member in self.members]

    @property
    def names(self) -> list[str]:
        """Each member's phase: its variant's name, with its rate when it is tuned."""
        if self.stage == "tune":
            return [f"{member.variant.name}@lr={member.lr:g}" + ("" if member.parts == ONE_RATE else f",{member.parts.label}")
                    for member in self.members]
        return [member.variant.name for member in self.members]


def compared_seeds(config: Config) -> list[int]:
    """The seeds whose test accuracies are compared: runs[i] is seed i of these."""
    return config.experiment.seeds or [config.seed]


def tuning_seeds(config: Config) -> list[int]:
    """The seeds that choose the rates: apart from the compared ones unless configured otherwise."""
    return config.experiment.tuning_seeds or compared_seeds(config)


def all_seeds(config: Config) -> list[int]:
    """Every seed with a base: the compared ones first, then those that only tune."""
    compared = compared_seeds(config)
    return compared + [seed for seed in tuning_seeds(config) if seed not in compared]


# Keys that decide nothing a job computes: where results go, how the run is spread, and the verdicts.
# experiment.tuning_seeds decides which jobs exist and the rates their members carry (in the key),
# not what a job computes: a map's second tuning set shares every fine-tuning job whose rate agrees.
NOT_IN_KEY = {"output", "map", "ray", "cache", ("experiment", "launcher"), ("experiment", "margin"),
              ("experiment", "tuning_seeds"), ("log", "tensorboard")}


def job_settings(config: Config, stage: str) -> dict:
    """The settings that shape a ``stage`` job's results. Pretraining reads none of finetune's keys,
    so every cell of a map, and a fine-tuning change, share their bases' jobs."""
    settings = to_dict(config)
    for key in NOT_IN_KEY:
        if isinstance(key, tuple):
            settings[key[0]].pop(key[1])
        else:
            settings.pop(key)
    if stage == "pretrain":
        for key in ("finetune", "lora", "dora", "analysis", "experiment", "seed"):
            settings.pop(key)
    return settings


def job_key(stage: str, members: Sequence[Member], settings: dict, stamp: Stamp) -> str:
    inputs = {"stage": stage, "settings": settings, "code": stamp.code, "torch": stamp.torch,
              "members": [{"method": m.variant.method, "label": m.variant.label, "adapter": m.variant.adapter,
                           "rates": m.variant.rates, "seed": m.seed, "lr": m.lr,
                           # one rate for every part: the key it had before parts had rates of their own
                           **({} if m.parts == ONE_RATE else {"parts": [m.parts.b, m.parts.magnitude]})}
                          for m in members]}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Tuning:
    """A cell's learning-rate search once every job it needs has a result: per variant, the grid
    it was tried on, each rate's validation accuracy per tuning seed, and the rate chosen."""
    grids: dict[str, list[float]]                               # variant name -> its rates, sorted
    accuracies: dict[tuple[str, float], list[float | None]]     # (name, rate) -> per tuning seed
    base_grid: list[float]                                      # experiment.lrs, sorted
    parts: dict[str, dict[PartRates, list[float | None]]] = dataclasses.field(default_factory=dict)
    # name -> at its chosen rate, each pair of multipliers tried -> per tuning seed (experiment.b_lr_ratios)

    def chosen_parts(self, name: str, configured: PartRates) -> PartRates:
        """The multipliers with the best mean validation accuracy at the chosen rate (ties to the
        smaller, the gentler); ``configured`` where none were tuned."""
        if name not in self.parts:
            return configured
        mean = mean_accuracies(self.parts[name])
        finished = [parts for parts, accuracy in mean.items() if accuracy is not None]
        if not finished:
            return configured
        return max(finished, key=lambda parts: (mean[parts], -parts.b, -parts.magnitude))

    def mean(self, name: str) -> dict[float, float | None]:
        return mean_accuracies({lr: self.accuracies[name, lr] for lr in self.grids[name]})

    def chosen(self, name: str) -> float:
        return choose_rate(self.mean(name))

    def table(self, config: Config) -> dict:
        """summary["tuning"]: per variant its choice and the evidence for it."""
        tuning, seeds = {}, tuning_seeds(config)
        for name, rates in self.grids.items():
            mean, chosen = self.mean(name), self.chosen(name)
            tuning[name] = {"lr": chosen, "grid": rates, "edge": grid_edge(rates, chosen),
                            "extended": [lr for lr in rates if lr not in self.base_grid],
                            "validation_accuracy": {f"{lr:g}": mean[lr] for lr in rates},
                            "validation_accuracies": {f"{lr:g}": self.accuracies[name, lr] for lr in rates},
                            "seeds": seeds, "compared_too": sorted(set(seeds) & set(compared_seeds(config)))}
            if name in self.parts:
                variant = next(v for v in finetune_variants(config) if v.name == name)
                best = self.chosen_parts(name, part_rates(config, variant))
                tuning[name]["parts"] = {
                    "b_lr_ratio": best.b, "magnitude_lr_ratio": best.magnitude,
                    "validation_accuracy": {parts.label: accuracy for parts, accuracy
                                            in mean_accuracies(self.parts[name]).items()},
                    "validation_accuracies": {parts.label: values for parts, values in self.parts[name].items()}}
        return tuning


class Plan:
    """Every job of one run, or of every cell of a map (``cells``: name -> that cell's config)."""

    def __init__(self, cells: dict[str, Config], stamp: Stamp):
        self.cells, self.stamp = cells, stamp

    def ready(self, progress: Progress) -> list[Job]:
        """The jobs that can train now and have no result: the bases first, since everything else
        starts from them; then, cell by cell, its tuning jobs known so far, or, once its tuning has
        ended, its fine-tuning jobs. Empty when the plan is done."""
        missing = [job for job in self.pretraining() if job.key not in progress]
        if missing:
            return missing
        jobs = [job for cell in self.cells for job in self.tuning_jobs(cell, progress) + self.finetuning(cell, progress)
                if job.key not in progress]
        return once(jobs)

    def pretraining(self) -> list[Job]:
        """The bases of every seed of every cell, as populations; cells with the same pretraining
        settings (a map's) share them, each seed in one population: a base's float32 bits depend on
        the models it shares its matmuls with, and every cell of a seed must adapt the same base."""
        groups: dict[str, tuple[dict, Config, list[int]]] = {}  # settings, as JSON -> those, a config, their seeds
        for config in self.cells.values():
            settings = job_settings(config, "pretrain")
            _, _, seeds = groups.setdefault(json.dumps(settings, sort_keys=True), (settings, config, []))
            seeds += [seed for seed in all_seeds(config) if seed not in seeds]
        jobs = []
        for settings, config, seeds in groups.values():
            for chunk in population_chunks(seeds, config.experiment.population, self.stamp.device_type):
                members = tuple(Member(PRETRAINED, seed, config.pretrain.lr) for seed in chunk)
                jobs.append(Job("pretrain", None, members, job_key("pretrain", members, settings, self.stamp)))
        return jobs

    def tuning_jobs(self, cell: str, progress: Progress) -> list[Job]:
        """``cell``'s tuning jobs known so far: the grid's, then each round of extension that the
        finished rounds ask for."""
        return self.search(cell, progress)[0]

    def tuning(self, cell: str, progress: Progress) -> Tuning | None:
        """``cell``'s finished search; None while a job it needs has no result, or with no experiment.lrs."""
        return self.search(cell, progress)[1]

    def search(self, cell: str, progress: Progress) -> tuple[list[Job], Tuning | None]:
        """The rounds of ``cell``'s search as far as ``progress`` goes: each variant at every rate of
        its grid on the tuning seeds; then, with extend_grid, a variant whose best rate is at its
        grid's edge one rate past that edge (``extended_rate``), up to ``EXTEND_STEPS`` times,
        until its best rate is inside. The test set plays no part."""
        config = self.cells[cell]
        if not config.experiment.lrs:
            return [], None
        base_grid = sorted(config.experiment.lrs)
        grids = {variant.name: list(base_grid) for variant in finetune_variants(config)}
        jobs = self.tune_jobs(cell, grids)
        tuning = Tuning(grids, {}, base_grid)
        for round_ in range(EXTEND_STEPS + 1):
            if any(job.key not in progress for job in jobs):
                return jobs, None
            tuning = Tuning(grids, validation_accuracies(jobs, progress), base_grid)
            beyond = {name: [extended_rate(rates, edge)] for name, rates in grids.items()
                      if (edge := grid_edge(rates, tuning.chosen(name)))}
            if not beyond or not config.experiment.extend_grid or round_ == EXTEND_STEPS:
                break
            jobs = jobs + self.tune_jobs(cell, beyond)
            grids = {name: sorted(rates + beyond.get(name, [])) for name, rates in grids.items()}
        return self.part_search(cell, progress, jobs, tuning)

    def part_search(self, cell: str, progress: Progress, jobs: list[Job], tuning: Tuning) -> tuple[list[Job], Tuning | None]:
        """With experiment.b_lr_ratios or magnitude_lr_ratios, the rate search's last round: each
        variant with parts at its chosen rate, at every pair of multipliers on the tuning seeds (the
        configured pair is the rate search's own runs)."""
        config = self.cells[cell]
        grids = {variant.name: grid for variant in finetune_variants(config) if len(grid := part_grid(config, variant)) > 1}
        if not grids:
            return jobs, tuning
        configured = {variant.name: part_rates(config, variant) for variant in finetune_variants(config)}
        members = [Member(variant, seed, tuning.chosen(variant.name), parts) for group in variant_groups(config)
                   for variant in group if variant.name in grids for parts in grids[variant.name]
                   if parts != configured[variant.name] for seed in tuning_seeds(config)]
        part_jobs = [job for group in variant_groups(config) for job in
                     self.populations(cell, "tune", [m for m in members if m.variant in group])]
        if any(job.key not in progress for job in part_jobs):
            return jobs + part_jobs, None
        accuracies = {name: {configured[name]: tuning.accuracies[name, tuning.chosen(name)]} for name in grids}
        for job in part_jobs:
            for member, accuracy in zip(job.members, progress[job.key]):
                accuracies[member.variant.name].setdefault(member.parts, []).append(accuracy)
        return jobs + part_jobs, dataclasses.replace(tuning, parts=accuracies)

    def tune_jobs(self, cell: str, grids: dict[str, list[float]]) -> list[Job]:
        """Each variant named in ``grids`` at each of its rates on every tuning seed, as populations."""
        config = self.cells[cell]
        return [job for group in variant_groups(config)
                for job in self.populations(cell, "tune", [Member(variant, seed, lr, part_rates(config, variant))
                                                           for variant in group if variant.name in grids
                                                           for lr in grids[variant.name] for seed in tuning_seeds(config)])]

    def finetuning(self, cell: str, progress: Progress) -> list[Job]:
        """``cell``'s compared runs, once its rates are chosen: per population group (a method, at
        the ranks of one bucket) every variant on every compared seed at its rate; with tuning, the
        same at the shared finetune.lr as "<variant>@shared" where the grid chose another rate
        (unless experiment.shared_lr is off, or the grid chose that rate for every variant)."""
        rates = self.rates(cell, progress)
        if rates is None:
            return []
        config, shared = self.cells[cell], self.cells[cell].finetune.lr
        parts = self.parts(cell, progress)
        shared_too = bool(config.experiment.lrs) and config.experiment.shared_lr and set(rates.values()) != {shared}
        jobs = []
        for group in variant_groups(config):
            jobs += self.populations(cell, "finetune", [Member(variant, seed, rates[variant.name], parts[variant.name])
                                                        for variant in group for seed in compared_seeds(config)])
            if shared_too:
                again = [variant.at_shared_rate() for variant in group if rates[variant.name] != shared]
                jobs += self.populations(cell, "finetune", [Member(variant, seed, shared, part_rates(config, variant))
                                                            for variant in again for seed in compared_seeds(config)])
        return jobs

    def parts(self, cell: str, progress: Progress) -> dict[str, PartRates]:
        """Each variant's multipliers: chosen on validation with experiment.b_lr_ratios or
        magnitude_lr_ratios, as configured without (call once the search has ended)."""
        config = self.cells[cell]
        configured = {variant.name: part_rates(config, variant) for variant in finetune_variants(config)}
        tuning = self.tuning(cell, progress) if config.experiment.lrs else None
        if tuning is None:
            return configured
        return {name: tuning.chosen_parts(name, parts) for name, parts in configured.items()}

    def rates(self, cell: str, progress: Progress) -> dict[str, float] | None:
        """Each variant's rate: chosen on validation with experiment.lrs (None until the search
        ends), finetune.lr without."""
        config = self.cells[cell]
        if not config.experiment.lrs:
            return {variant.name: config.finetune.lr for variant in finetune_variants(config)}
        tuning = self.tuning(cell, progress)
        return None if tuning is None else {name: tuning.chosen(name) for name in tuning.grids}

    def populations(self, cell: str, stage: str, members: list[Member]) -> list[Job]:
        config = self.cells[cell]
        settings = job_settings(config, stage)
        return [Job(stage, cell, tuple(chunk), job_key(stage, chunk, settings, self.stamp))
                for chunk in population_chunks(members, config.experiment.population, self.stamp.device_type)]


def part_grid(config: Config, variant: Variant) -> list[PartRates]:
    """The multiplier pairs a variant tries at its chosen rate: B's (experiment.b_lr_ratios) for lora,
    dora and direction, each with the magnitude's (experiment.magnitude_lr_ratios) for dora; its
    configured pair alone where a list is null, or for a method without those parts."""
    configured = part_rates(config, variant)
    if variant.method not in WITH_B:
        return [configured]
    b_grid = config.experiment.b_lr_ratios or [configured.b]
    m_grid = (config.experiment.magnitude_lr_ratios or [configured.magnitude]) if variant.method == "dora" else [1.0]
    return [PartRates(b, m) for b in b_grid for m in m_grid]


def once(jobs: list[Job]) -> list[Job]:
    """``jobs`` with each key once, as it first comes: two cells of a map share a fine-tuning job
    wherever their two tuning sets chose the same rate (map.second_tuning_seeds)."""
    first: dict[str, Job] = {}
    for job in jobs:
        first.setdefault(job.key, job)
    return list(first.values())


def validation_accuracies(jobs: list[Job], progress: Progress) -> dict[tuple[str, float], list[float | None]]:
    """(variant name, rate) -> validation accuracy per tuning seed, in the tuning seeds' order."""
    accuracies = {}
    for job in jobs:
        for member, accuracy in zip(job.members, progress[job.key]):
            accuracies.setdefault((member.variant.name, member.lr), []).append(accuracy)
    return accuracies


def choose_rate(mean_accuracies: dict[float, float | None]) -> float:
    """The rate with the best mean validation accuracy; ties go to the smaller rate (the gentler
    update). A rate with None (some seed diverged there) is never chosen; if every rate diverged,
    the smallest, the likeliest to train, whose runs then record what happened."""
    finished = [lr for lr, accuracy in mean_accuracies.items() if accuracy is not None]
    if not finished:
        return min(mean_accuracies)
    return max(finished, key=lambda lr: (mean_accuracies[lr], -lr))


def grid_edge(grid: list[float], chosen: float) -> str | None:
    """"lowest" or "highest" when ``chosen`` is the grid's edge rate, where the validation accuracy
    may still rise beyond the grid; None for a rate inside it."""
    if len(grid) < 2 or min(grid) < chosen < max(grid):
        return None
    return "lowest" if chosen == min(grid) else "highest"


def extended_rate(grid: list[float], edge: str) -> float:
    """The next rate past ``grid``'s ``edge`` ("lowest" or "highest"): its outermost rate times the
    ratio of its two outermost rates on that side, so an even (geometric) grid stays even."""
    rates = sorted(grid)
    outer, inner = (rates[0], rates[1]) if edge == "lowest" else (rates[-1], rates[-2])
    return float(f"{outer * outer / inner:.6g}")  # 6 digits: the rate prints as it is keyed (f"{lr:g}")


def mean_accuracies(accuracies: dict[float, list[float | None]]) -> dict[float, float | None]:
    """Per rate, the mean validation accuracy over the tuning seeds; None where any seed diverged."""
    return {lr: None if None in values else statistics.fmean(values) for lr, values in accuracies.items()}
