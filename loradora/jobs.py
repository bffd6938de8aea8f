"""A job of the plan (loradora/plan.py) trained and scored (``run_job``), and its result kept in the
run folder under its key (``JobStore``).

A job builds its own members from the bases' weights, then trains them at once (a population, or
one model alone) and scores each, so everything that decides its bits is in the job and its inputs:
the same job gives the same result here, in a Ray task on another machine, or after a resume.
Each member's adapter init and the global RNG state that adapter dropout then draws from come from
``torch.manual_seed(seed)`` as the member is made (``phases.start_variant``).

What a job says goes through ``Output``: metrics records (metrics.jsonl, TensorBoard) and console
lines, in order; a Ray task keeps them and the driver replays them when its result arrives.
"""

import io
import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from loradora import cache, phases
from loradora.adapters import ADAPTERS
from loradora.cache import PACKAGE, BaseCache, source_digest
from loradora.config import Config
from loradora.data import Split, seed_subset
from loradora.experiment import decomposition_result
from loradora.files import Damaged, read_checked, write_checked
from loradora.model import MLP, initial_base
from loradora.plan import Job, Member, compared_seeds
from loradora.population import member_step
from loradora.results import MethodResult
from loradora.run_folder import cpu_name
from loradora.teachers import gain_recovery
from loradora.training import MemberRun, evaluate, train_members

# Every file whose code decides a job's results: the pretraining's (cache.SOURCES), and the
# adapters, the methods, the tasks' images and labels, the dM/dD analysis and this module. A change
# to any of them makes a stopped run refuse to resume (its jobs would not match the new code's).
SOURCES = cache.SOURCES + tuple(PACKAGE / name for name in (
    "variants.py", "adapters.py", "methods.py", "tasks.py", "teachers.py", "analysis.py"))
RESULT_FORMAT = 1  # bump when what a result file holds changes
LABEL = f"job result {RESULT_FORMAT}"  # its checksum line's (files.write_checked)


def code_digest() -> str:
    return source_digest(SOURCES)[:16]


@dataclass
class MemberResult:
    """What one member of a job left: per stage, what the run reads of it."""
    result: MethodResult | None = None           # pretrain, finetune: scored on the test set
    validation_accuracy: float | None = None     # tune: on the validation split; None if it diverged
    hits: torch.Tensor | None = None             # finetune: which test images it got right (bool)
    decomposition: dict | None = None            # finetune with analysis: experiment.decomposition_result
    state: dict | None = None                    # pretrain: the base; finetune: the model, for the first seed's files


@dataclass
class JobResult:
    key: str
    stage: str               # the job's (plan.Job), to read a run folder's results by
    cell: str | None
    members: list[MemberResult]
    records: list[dict]      # every metrics record it made, in order: metrics.jsonl gets them again on a resume
    ran_on: dict             # the device, its name and torch's thread count: float32 bits depend on them
    started: float           # time.time() when it began and ended (Ray runs jobs side by side)
    finished: float
    cached: bool = False     # pretrain: loaded from the pretrained-base cache, not trained

    @property
    def validation(self) -> tuple[float | None, ...]:
        """What the plan reads of it (plan.Progress)."""
        return tuple(member.validation_accuracy for member in self.members)


@dataclass
class JobData:
    """What a job reads besides its config: the images it trains on, those it is scored on (the
    test set; the validation split for tuning), and its members' bases (seed -> weights)."""
    train: Split
    scored: Split
    bases: dict[int, dict] = field(default_factory=dict)


class Output:
    """Where a job's metrics records and console lines go (``record``, ``say``); ``tags`` are added
    to every record (``tuning=True`` for a tuning job's), and ``kept`` holds them for its result."""

    def __init__(self, record: Callable[[dict], None], say: Callable[[str], None] = tqdm.write, **tags):
        self.record, self.say, self.tags = record, say, tags
        self.kept: list[dict] = []

    def __call__(self, metrics: dict) -> None:
        metrics = {**self.tags, **metrics}
        self.kept.append(metrics)
        self.record(metrics)


def run_job(job: Job, config: Config, data: JobData, output: Output) -> JobResult:
    """Build ``job``'s members, train them at once and score each (``config``: its cell's)."""
    started = time.time()
    device = data.train.images.device
    members = build(job, config, data, device)
    trained = train(job, config, members, data.train, output)
    scored = [score(job, config, position, data, output) for position in zip(job.members, members, trained)]
    if job.stage != "tune":
        tests = [phases.test_record(member.result) for member in scored if not member.result.diverged]
        if (line := phases.member_line(label(job), tests)) is not None:
            output.say(line)
    return JobResult(job.key, job.stage, job.cell, scored, output.kept, ran_on(device), started, time.time())


def build(job: Job, config: Config, data: JobData, device: torch.device) -> list[phases.Tuned]:
    """Each member as it starts: a seeded untrained base, or a copy of its seed's base prepared for
    its variant (every seed's adapter init the same for every method)."""
    if job.stage == "pretrain":
        return [phases.Tuned(initial_base(config.model.hidden_sizes, seed, device), {}, None) for seed in job.seeds]
    bases = {seed: base_model(config, state, device) for seed, state in data.bases.items()}
    track = job.stage == "finetune" and bool(config.analysis.every_n_batches)
    return [phases.start_variant(bases[member.seed], member.variant, member.seed, track) for member in job.members]


def base_model(config: Config, state: dict, device: torch.device) -> nn.Module:
    """An MLP holding the base weights ``state``."""
    model = MLP(config.model.hidden_sizes).to(device)
    model.load_state_dict(state)
    return model


def training_settings(job: Job, config: Config):
    """The config section ``job`` trains by (pretrain or finetune), and its fixed number of
    batches (finetune.steps; None: its epochs)."""
    if job.stage == "pretrain":
        return config.pretrain, None
    return config.finetune, config.finetune.steps


def train(job: Job, config: Config, members: list[phases.Tuned], data: Split, output: Output) -> list[MemberRun]:
    """``training.train_members`` on ``job``'s members: member i draws its batches from seed i's
    generator; its records go to ``output`` marked ``member``, the console gets one line per logged
    batch with the members' mean and range, and a line per member that diverged. Trackers measure
    each member's weight decomposition every analysis.every_n_batches steps."""
    settings, steps = training_settings(job, config)
    models, names, seeds = [member.model for member in members], job.names, job.seeds
    output.say(f"\n== {label(job)}: {phases.phase_header(models[0], settings.epochs, steps)}{together(job)}")

    def log(records: dict[int, dict]) -> None:
        for i, r in records.items():
            output({"seed": seeds[i], "phase": names[i], "member": True, **r})
        if (line := phases.member_line(label(job), list(records.values()))) is not None:
            output.say(line)

    def observe(step: int, alive: list[int]) -> None:
        for i in alive:
            if members[i].tracker is not None:
                members[i].tracker(step)

    tracked = any(member.tracker is not None for member in members)
    runs = train_members(member_step(models, [m.lr for m in job.members], seeds, config.precision,
                                     [m.parts for m in job.members]), data,
                         subsets=seed_subsets(job, config, len(data)),
                         epochs=settings.epochs, batch_size=settings.batch_size,
                         generators=[torch.Generator().manual_seed(seed) for seed in seeds], log=log,
                         log_every=config.log.every_n_batches, max_loss=settings.max_loss, observe=observe,
                         observe_every=config.analysis.every_n_batches if tracked else None, steps=steps)
    for name, seed, run in zip(names, seeds, runs):
        if run.diverged:
            output.say(f"{name} (seed {seed}) diverged and was stopped: {run.diverged}; its results are not used")
            output({"seed": seed, "phase": name, "member": True, "kind": "diverged", "message": run.diverged})
    return runs


def seed_subsets(job: Job, config: Config, pool_size: int) -> list[torch.Tensor] | None:
    """With finetune.subset_per_seed, each member's own fine-tuning images (indices into the pool
    the job holds, ``data.seed_subset``); None when every member trains on all of it."""
    settings = config.finetune
    if job.stage == "pretrain" or not settings.subset_per_seed or settings.train_subset is None:
        return None
    return [seed_subset(pool_size, settings.train_subset, settings.subset_seed, seed) for seed in job.seeds]


def score(job: Job, config: Config, position: tuple[Member, phases.Tuned, MemberRun], data: JobData,
          output: Output) -> MemberResult:
    """One trained member scored: on the validation split when tuning, on the whole test set
    otherwise (with its seed's labels, where a teacher labels each seed its own way)."""
    member, tuned, run = position
    if job.stage == "tune":
        accuracy = None if run.diverged else evaluate(tuned.model, data.scored.of_seed(member.seed)).percent
        return MemberResult(validation_accuracy=accuracy)
    phases.assert_unchanged(tuned.model, tuned.frozen, member.variant.name)
    settings, steps = training_settings(job, config)
    n_train = len(data.train) if (subsets := seed_subsets(job, config, len(data.train))) is None else len(subsets[0])
    training = dict(lr=member.lr, epochs=1 if steps else settings.epochs, steps=steps, n_train=n_train)
    if run.diverged:
        return MemberResult(phases.method_result(tuned.model, member.variant, n_test=len(data.scored),
                                                 error=run.diverged, **training))
    if tuned.tracker is not None:  # the weights as they ended, too
        tuned.tracker(sum(len(r["batch_losses"]) for r in run.epoch_records))
    scored = phases.score(tuned.model, member.variant, data.scored.of_seed(member.seed),
                          phases.tagged(output, seed=member.seed, member=True),
                          epoch_records=run.epoch_records, **training)
    if job.stage == "pretrain":
        return MemberResult(scored.result, state=tuned.model.state_dict())
    if config.finetune.task == "gain":  # how far the row gains moved towards the teacher's (docs/why.md)
        base = base_model(config, data.bases[member.seed], data.scored.images.device)
        phases.tagged(output, seed=member.seed, member=True)(
            {"kind": "gain_recovery", "phase": member.variant.name,
             **gain_recovery(tuned.model, base, config.finetune.teacher_seed)})
    first = (member.seed == compared_seeds(config)[0] and member.variant.rates == "tuned"
             and member.variant.method in ADAPTERS)  # its files are saved (artifacts.save_method)
    return MemberResult(scored.result, hits=scored.hits, state=tuned.model.state_dict() if first else None,
                        decomposition=decomposition_result(tuned.tracker) if tuned.tracker is not None else None)


def from_cache(job: Job, config: Config, data: JobData, output: Output, cache: BaseCache) -> JobResult | None:
    """A pretraining job's bases from the pretrained-base cache (loradora/cache.py), tested again,
    their training records replayed (marked cached); None unless every member is there, unharmed.
    A population's members are cached under a key naming the whole population, since a member's
    float32 bits depend on which models share its matmuls: one damaged member retrains them all."""
    started, device = time.time(), data.train.images.device
    paths = [cache.path(seed, job.seeds) for seed in job.seeds]
    models = [initial_base(config.model.hidden_sizes, seed, device) for seed in job.seeds]
    cached = [cache.read(path, model) for path, model in zip(paths, models)]
    if None in cached:
        return None
    members = []
    for member, model, path, base in zip(job.members, models, paths, cached):
        output.say(f"\n== pretrained: reusing pretrained base from {path} (same data, model, pretrain settings, seed)")
        record = phases.tagged(output, seed=member.seed)
        records = base.load_into(model)
        for metrics in records:
            record({**metrics, "cached": True})  # its curve, for the plots; show() leaves them unprinted
        result = phases.score(model, member.variant, data.scored, record, lr=member.lr, epochs=config.pretrain.epochs,
                              n_train=len(data.train), epoch_records=[r for r in records if r["kind"] == "epoch"],
                              cached=True).result
        members.append(MemberResult(result, state=model.state_dict()))
    return JobResult(job.key, job.stage, job.cell, members, output.kept, ran_on(device), started, time.time(),
                     cached=True)


def to_cache(result: JobResult, job: Job, cache: BaseCache, config: Config) -> None:
    """A freshly pretrained job's bases into the cache, each with its own records."""
    for member, outcome in zip(job.members, result.members):
        if outcome.result.diverged:
            continue
        model = base_model(config, outcome.state, next(iter(outcome.state.values())).device)
        cache.save(cache.path(member.seed, job.seeds), model,
                   [metrics for metrics in result.records if metrics["seed"] == member.seed])


def label(job: Job) -> str:
    """The phase's name on the console: its variants (in a map, after its cell's name)."""
    names = ", ".join(dict.fromkeys(job.names))
    return f"{job.cell}: {names}" if job.cell else names


def together(job: Job) -> str:
    """How many models train at once, at which rates, on which seeds."""
    if len(job.members) == 1:
        return ""
    rates = "" if job.stage == "pretrain" else f" at lr {', '.join(f'{lr:g}' for lr in dict.fromkeys(m.lr for m in job.members))}"
    return f"; {len(job.members)} models at once{rates} (seeds {', '.join(map(str, dict.fromkeys(job.seeds)))})"


def ran_on(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {"device": device.type, "device_name": name, "threads": torch.get_num_threads()}


class JobStore:
    """Each finished job's result, in ``<run>/jobs/<key>.pt``: one checksum line, then the
    ``torch.save`` of the ``JobResult``, written atomically. A file that is damaged is said in
    one line and its job trains again."""

    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.pt"

    def save(self, result: JobResult) -> None:
        buffer = io.BytesIO()
        torch.save(result, buffer)
        write_checked(self.path(result.key), buffer.getvalue(), LABEL)

    def load(self, key: str, device: torch.device) -> JobResult | None:
        path = self.path(key)
        if not path.exists():
            return None
        try:
            payload = read_checked(path, LABEL)
            # our own file, checked against its checksum: its dataclasses load as they were saved
            return torch.load(io.BytesIO(payload), map_location=device, weights_only=False)
        except (Damaged, RuntimeError, EOFError, AttributeError, pickle.UnpicklingError) as error:
            print(f"warning: job result {path} is damaged ({error}); training that job again", file=sys.stderr)
            return None
