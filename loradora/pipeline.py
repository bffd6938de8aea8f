"""The experiment's steps, in the order ``dora_example.main`` calls them: open the run, load the data,
pretrain, tune, fine-tune, compare, report.

Each step that trains asks the plan (loradora/plan.py) for its jobs and hands them to
``Run.execute``, which takes the results the run folder holds already and has the launcher train
the rest (loradora/launcher.py), keeping each result in the folder as it arrives
(loradora/jobs.py). So a stopped run resumes (``open_run(..., resume=folder)``) with the jobs it
had not finished, and its summary is the one an uninterrupted run writes.

A run is one *cell* (``Cell``): its config, folder, summary and metrics log; a map
(configs/map.yaml, loradora/regime_map.py) is one cell per angle and size, all in one plan, so
their pretraining is shared and their other jobs are ready side by side.
"""

import dataclasses
import fcntl
import functools
import gc
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from loradora import data as mnist_data
from loradora import jobs, phases, regime_map
from loradora.artifacts import format_artifacts, save_method, save_pretrained
from loradora.cache import BaseCache
from loradora.choices import TEACHER_TASKS
from loradora.config import Config, ConfigError, adapter_differences, resolve_device, to_dict, to_yaml
from loradora.data import DataUnavailable, Split, hold_out
from loradora.experiment import adapter_pairs, aggregate, rate_sensitivity
from loradora.files import WriteFailed, read_json_or_none, write_atomic, write_json
from loradora.jobs import JobData, JobResult, JobStore, Output
from loradora.launcher import LauncherUnavailable, make_launcher
from loradora.methods import prepare
from loradora.per_image import HITS_FILE, ImageHits
from loradora.plan import Job, Plan, Stamp, all_seeds, compared_seeds, once, tuning_seeds
from loradora.plots import write_plots
from loradora.report import format_markdown, format_rate_sensitivity, format_report, format_tuning
from loradora.results import SeedResults
from loradora.run_folder import MetricsLog, OutputUnavailable, create_run_dir, environment
from loradora.stops import stop_on_signals
from loradora.tasks import shift_split, task_label, taught, teachers_of
from loradora.tensorboard import TensorBoardLog, TensorBoardUnavailable, require_tensorboard
from loradora.training import evaluate, use_deterministic_algorithms
from loradora.variants import NO_FINETUNE, finetune_variants, part_rates

STAMP_FILE = "stamp.json"      # in jobs/: what the jobs' bits depend on besides the config (plan.Stamp)
TABLE_FILE = "table.md"        # the printed tables as markdown, to paste or compare (report.format_markdown)


class RunRefused(RuntimeError):
    """The run cannot start or resume: exit code 2, and nothing is written."""


class PretrainingDiverged(RuntimeError):
    """A base diverged: there is nothing to fine-tune."""


# ---- what a run holds ----


class Summary:
    """summary.json as the run fills it in: saved after every phase (with ``path``), so an
    interruption keeps what has finished; ``status`` stays "running" until the run ends."""

    def __init__(self, config: Config, device: torch.device, path: Path | None = None):
        self.path, self.margin = path, config.experiment.margin
        self.data = {"status": "running", "methods": {}, "config": to_dict(config), "env": environment(device)}
        self.hits = ImageHits()  # which test images each fine-tuned member got right: test_correct.pt

    def update(self, runs: list[SeedResults]) -> None:
        """The seeds' results so far (the last may be partial), aggregated (experiment.aggregate)."""
        self.data.update(aggregate([run for run in runs if run.methods], self.margin, self.hits))
        self.save()

    def finish(self, status: str) -> None:
        self.data["status"] = status
        self.save()

    def close(self, status: str) -> str:
        """Mark a run that ended early with ``status``, unless it had finished; says where its
        finished phases are. A summary that cannot be written keeps its last good version."""
        if self.data["status"] != "running":  # complete, or pretraining diverged: the results are whole
            return f"the results are in {self.path}"
        try:
            self.finish(status)
        except WriteFailed as error:
            return f"finished phases are in {self.path} as last saved, not marked {status} ({error.error.strerror})"
        return f"finished phases are in {self.path}, marked {status}"

    def save(self) -> None:
        if self.path is not None:
            if self.hits.packed:
                self.hits.save(self.path.parent / HITS_FILE)
            write_json(self.path, self.data)


@dataclass
class Splits:
    train: Split
    test: Split
    validation: Split | None  # held out of the training images (data.validation_size), or None


@dataclass
class Cell:
    """One run of the plan: its config, its folder and what it writes there. A plain run is one
    cell, named ""; a map has one per angle and size, each in a folder of its own."""
    name: str
    config: Config
    folder: Path
    summary: Summary
    sinks: list                                   # metrics.jsonl, and TensorBoard with log.tensorboard
    runs: list[SeedResults] = field(default_factory=list)  # per compared seed, its results so far

    def write(self, record: dict) -> None:
        for sink in self.sinks:
            sink(record)

    def record(self, metrics: dict) -> None:
        """A metrics record of this cell: on the console (phases.show) and into its files."""
        phases.show(metrics)
        self.write(metrics)


class Run:
    """A run as it goes: its folder (locked against a second process), device, launcher, plan,
    cells, and the jobs' results so far. Used as a context manager, it turns the ways a run ends
    into its exit code (dora_example.EXIT_CODES): a stop signal, a failed write, missing data."""

    def __init__(self, config: Config, folder: Path, resumed: bool, device: torch.device, launcher, lock):
        self.config, self.folder, self.resumed, self.device, self.launcher = config, folder, resumed, device, launcher
        self.lock = lock  # acquire(folder)'s
        self.started = time.perf_counter()
        self.stamp = stamp_of(device)
        self.cells = [open_cell(name, cell_config, folder, resumed, device)
                      for name, cell_config in cells_of(config, folder).items()]
        self.plan = Plan({cell.name: cell.config for cell in self.cells}, self.stamp)
        self.store = JobStore(folder / "jobs")
        self.results: dict[str, JobResult] = {}  # key -> result: kept from before, or trained now
        self.kept: set[str] = set()             # the keys whose results were in the folder when it opened
        self.replayed: set[str] = set()         # the kept results this process has gone through
        self.base_states: dict[int, dict] = {}  # seed -> its base's weights, once pretrained
        self.trained = 0
        self.exit_code = 0
        self.cache = BaseCache(config, device) if config.cache.enabled else None

    @property
    def progress(self) -> dict:
        return {key: result.validation for key, result in self.results.items()}

    def cell(self, name: str) -> Cell:
        return next(cell for cell in self.cells if cell.name == name)

    def bases_of(self, job: Job) -> dict[int, dict]:
        """The weights of the bases ``job``'s members start from (seed -> state dict)."""
        return {seed: self.base_states[seed] for seed in dict.fromkeys(job.seeds)}

    def keep_results(self) -> None:
        """Read back every job result the folder holds; a damaged one is dropped (and trained again)."""
        for path in sorted(self.store.folder.glob("*.pt")):
            if (result := self.store.load(path.stem, self.device)) is not None:
                self.results[result.key] = result
        self.kept = set(self.results)
        if self.resumed:
            n = len(self.kept)
            print(f"resuming {self.folder}: {n} job result{'' if n == 1 else 's'} kept; training only what is missing")

    def execute(self, planned: list[Job], inputs) -> Iterator[tuple[Job, JobResult]]:
        """``planned``'s results, in order, each as it comes: those the run has (kept from before:
        their records are replayed into the metrics files, not onto the console), and the rest
        trained by the launcher (``inputs``: what each job needs). The steps keep each new result
        in the folder as it comes, so a stop loses only the jobs still training."""
        # a job that two cells share (a map's second tuning set, where it chose the same rate) trains once
        missing = once([job for job in planned if job.key not in self.results])
        fresh = self.launcher.run(missing, inputs)
        for job in planned:
            if job.key in self.results:
                result = self.results[job.key]
                if job.key not in self.replayed:  # once, though a map's cells share their pretraining
                    self.replayed.add(job.key)
                    for record in result.records:
                        self.write(job, record)
            else:
                _, result = next(fresh)
                self.results[job.key] = result
                self.trained += 1
            yield job, result

    def write(self, job: Job, record: dict) -> None:
        """A record of ``job`` into the files of the cells it serves (every cell, for a base)."""
        for cell in (self.cells if job.cell is None else [self.cell(job.cell)]):
            cell.write(record)

    def record(self, job: Job, metrics: dict) -> None:
        """A new record of ``job``: on the console once, and into its cells' files."""
        phases.show(metrics)
        self.write(job, metrics)

    def __enter__(self) -> "Run":
        self.stops = stop_on_signals()  # after the launcher: ray.init sets a SIGTERM handler of its own
        self.received = self.stops.__enter__()
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        try:
            return self.end(error)
        finally:
            for cell in self.cells:
                for sink in cell.sinks:
                    getattr(sink, "close", lambda: None)()
            self.stops.__exit__(None, None, None)
            self.launcher.close()  # a Ray runtime started for the run goes, with its workers
            release(self.lock)

    def end(self, error: BaseException | None) -> bool:
        """The exit code for how the run ended; True when that ending is handled here."""
        if error is None:
            self.exit_code = 0 if all(cell.summary.data["status"] == "complete" for cell in self.cells) else 1
            return True
        if isinstance(error, DataUnavailable):  # raised while loading MNIST, before anything is trained
            if not self.resumed:
                shutil.rmtree(self.folder)  # so an empty run folder is not left behind to be mistaken for a result
            print(f"error: {error}", file=sys.stderr)
        elif isinstance(error, KeyboardInterrupt):
            stop = self.received.stop(error)
            print(f"\ninterrupted by {stop.name}: {self.close('interrupted')}; {self.how_to_resume()}", file=sys.stderr)
            self.exit_code = stop.exit_code
            return True
        elif isinstance(error, WriteFailed):
            print(f"error: {error}; {self.close('write failed')}", file=sys.stderr)
        elif isinstance(error, PretrainingDiverged):
            for cell in self.cells:
                cell.summary.finish("pretraining diverged")
            print(f"error: the pretraining diverged, so there is nothing to fine-tune: {error}", file=sys.stderr)
        else:
            return False
        self.exit_code = 1
        return True

    def close(self, status: str) -> str:
        return "; ".join(cell.summary.close(status) for cell in self.cells)

    def how_to_resume(self) -> str:
        return f"continue it with: python dora_example.py --resume {self.folder}"


def cells_of(config: Config, folder: Path) -> dict[str, Config]:
    """The run's cells: itself, or a map's (regime_map.cells), each a config of its own."""
    if config.map.rotate_degrees is None:
        return {"": config}
    return {cell.name: cell.config(config, folder) for cell in regime_map.cells(config.map)}


def open_cell(name: str, config: Config, folder: Path, resumed: bool, device: torch.device) -> Cell:
    """A cell's folder (the run's own, or <run>/<name> in a map) with its sinks; on a resume its
    metrics files start again, since every kept job replays its records into them."""
    folder = folder / name if name else folder
    folder.mkdir(exist_ok=True)
    if resumed:
        (folder / "metrics.jsonl").unlink(missing_ok=True)
        shutil.rmtree(folder / "tensorboard", ignore_errors=True)
    if name:
        write_atomic(folder / "config.yaml", to_yaml(config))
    sinks = [MetricsLog(folder / "metrics.jsonl")]  # each gets every metrics record
    if config.log.tensorboard:
        sinks.append(TensorBoardLog(folder / "tensorboard"))
    return Cell(name, config, folder, Summary(config, device, folder / "summary.json"), sinks)


# ---- open the run ----


def open_run(config: Config, resume: Path | None = None, other_machine: bool = False, label: str = "") -> Run:
    """A new run folder for ``config``, or the stopped run in ``resume`` (``config`` is then its
    own, read back from its config.yaml); RunRefused (exit code 2) when either cannot be: a device
    or an optional package that is missing, a folder that exists or cannot be made, another process
    on it, or jobs whose code, torch or device differ from this machine's. ``label``: what ran, for
    a folder output.run_name leaves unnamed (run_folder.run_label)."""
    # The imports leave some 230,000 objects that live until exit; frozen, no collection scans
    # them again, and the interpreter's exit is 0.4 s shorter (BENCHMARKS.md, start-up).
    gc.freeze()
    try:
        device = resolve_device(config.device)
        if config.log.tensorboard:
            require_tensorboard()  # a missing package stops the run before its folder is made
        folder = resume if resume is not None else create_run_dir(config.output.dir, config.output.run_name, label)
    except (ConfigError, TensorBoardUnavailable, OutputUnavailable) as error:
        raise RunRefused(str(error)) from None
    lock = acquire(folder)
    try:
        check_machine(folder / "jobs" / STAMP_FILE, stamp_of(device), device, other_machine)
        # so do a missing ray package and a cluster that cannot be joined
        launcher = make_launcher(config.experiment.launcher, config.ray.address, device)
    except (RunRefused, LauncherUnavailable) as error:
        release(lock)
        if resume is None:
            shutil.rmtree(folder)
        raise RunRefused(str(error)) from None
    if config.deterministic:
        use_deterministic_algorithms()
    run = Run(config, folder, resume is not None, device, launcher, lock)
    run.keep_results()
    return run


def stamp_of(device: torch.device) -> Stamp:
    """This process's stamp: the code digest, torch version and device type its jobs have."""
    return Stamp(jobs.code_digest(), torch.__version__, device.type)


def acquire(folder: Path):
    """An exclusive lock on the run folder, held while the process lives: the kernel drops it when
    the process ends, however it ends (SIGKILL too), so a lock left behind is never stale."""
    handle = open(folder / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunRefused(f"{folder} is in use by {holder}; wait for it to end, or stop it first") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}")
    handle.flush()
    return handle


def release(lock) -> None:
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()


def check_machine(path: Path, stamp: Stamp, device: torch.device, other_machine: bool) -> None:
    """The jobs kept in a run folder were trained with ``path``'s code, torch and device: another
    code digest, torch version or device type would mix results of two computations, and is refused;
    another CPU model or thread count changes float32's last bits only, and is allowed when asked
    (``other_machine``; summary.json then says which jobs ran where). A new folder records ours."""
    here = {**dataclasses.asdict(stamp), **jobs.ran_on(device)}
    before = read_json_or_none(path)
    if before is None:
        write_json(path, here)
        return
    refused = [key for key in ("code", "torch", "device_type") if before.get(key) != here[key]]
    if refused:
        differ = ", ".join(f"{key} {before.get(key)} then, {here[key]} now" for key in refused)
        raise RunRefused(f"cannot resume {path.parent.parent}: its jobs were trained with other {differ}; "
                         f"start a new run instead")
    machine = [key for key in ("device_name", "threads") if before.get(key) != here[key]]
    if machine and not other_machine:
        differ = ", ".join(f"{key} {before.get(key)!r} then, {here[key]!r} now" for key in machine)
        raise RunRefused(f"{path.parent.parent} was started on another machine ({differ}): its float32 results "
                         f"would differ in their last bits from this one's; add --other-machine to continue "
                         f"anyway (summary.json then says which jobs ran where)")


# ---- load the data ----


@dataclass
class CellData:
    mnist: Splits  # pretraining's: MNIST as it is
    task: Splits   # the cell's fine-tuning task, its validation split and test set


def load_data(run: Run) -> dict[str, CellData]:
    """MNIST once, then each cell's fine-tuning task made from it. The run's resolved config is
    saved first (config.yaml), every key as the run uses it, and printed with log.print_config."""
    config = run.config
    if config.log.print_config:
        print(to_yaml(config))
    write_atomic(run.folder / "config.yaml", to_yaml(config))
    options = dict(root=config.data.root, device=run.device, download=config.data.download)
    train_data = mnist_data.load_mnist(train=True, subset=config.data.train_subset, **options)
    validation = None
    if config.data.validation_size:
        train_data, validation = hold_out(train_data, config.data.validation_size, config.data.validation_seed)
    mnist = Splits(train_data, mnist_data.load_mnist(train=False, subset=config.data.test_subset, **options),
                   validation)
    held = f", {len(validation):,} held out for validation" if validation is not None else ""
    print(f"MNIST: {len(mnist.train):,} training{held} and {len(mnist.test):,} test images, on {run.device}")
    if unlike := adapter_differences(config):
        print(f"note: LoRA and DoRA differ in {unlike}, so their comparison is not like for like")
    return {cell.name: CellData(mnist, task_splits(cell.config, mnist)) for cell in run.cells}


def task_splits(config: Config, mnist: Splits) -> Splits:
    """The images as the fine-tuning task sees them: shifted (finetune.task), and drawn from the
    task's pool (finetune.train_subset, finetune.validation_size)."""
    settings = config.finetune

    def shift(split: Split | None) -> Split | None:
        return None if split is None else shift_split(split, settings.task, settings.rotate_degrees,
                                                      settings.permutation_seed)

    if settings.task != "same":
        label = task_label(settings.task, settings.rotate_degrees, settings.permutation_seed, settings.teacher_seed)
        print(f"fine-tuning task: {label}, training, validation and test images alike")
    task = Splits(shift(mnist.train), shift(mnist.test), shift(mnist.validation))
    if settings.train_subset is None and not settings.validation_size:
        return task
    # The fine-tuning set (and its validation split) drawn from the task's training images, the
    # pool; pretraining keeps every image, so each size adapts the same base (issue 19's map).
    # With subset_per_seed the whole pool travels and each job draws its seeds' own sets from it
    # (jobs.seed_subsets); the validation split is drawn here either way, the same for every seed.
    size = None if settings.subset_per_seed else settings.train_subset
    train, validation = mnist_data.draw(task.train, size, settings.validation_size, settings.subset_seed)
    validation = validation if settings.validation_size else task.validation
    drawn = (f"{settings.train_subset or len(train):,} of the task's {len(task.train):,} training images "
             f"(finetune.train_subset, " + ("a draw of its own per seed" if settings.subset_per_seed
                                             else f"draw {settings.subset_seed}") + ")")
    print(f"fine-tuning on {drawn}" + (f", {len(validation):,} more for validation" if settings.validation_size else ""))
    return Splits(train, task.test, validation)


# ---- pretrain ----


def pretrain(run: Run, data: dict[str, CellData]) -> dict[int, torch.nn.Module]:
    """Every seed's base (seed -> model): from the run folder, the pretrained-base cache, or
    trained as populations. Then, per cell: its first seed's base saved, its teacher's labels made
    (finetune.task gain or turn), and on a shifted task every base scored on it before fine-tuning."""
    config, mnist = run.cells[0].config, next(iter(data.values())).mnist
    planned = run.plan.pretraining()

    def inputs(job: Job):
        return config, JobData(mnist.train, mnist.test), Output(functools.partial(run.record, job))

    for job in planned:
        if job.key not in run.results and run.cache is not None:
            if (cached := jobs.from_cache(job, *inputs(job), run.cache)) is not None:
                run.results[job.key] = cached
                run.replayed.add(job.key)  # its records are written already
                run.store.save(cached)
    bases, outcomes = {}, {}
    for job, result in run.execute(planned, inputs):
        if job.key not in run.kept and not result.cached:
            run.store.save(result)
            if run.cache is not None:
                jobs.to_cache(result, job, run.cache, config)
        for seed, member in zip(job.seeds, result.members):
            outcomes[seed] = member.result
            if member.state is not None:
                bases[seed] = jobs.base_model(config, member.state, run.device)
    run.base_states = {seed: base.state_dict() for seed, base in bases.items()}
    for cell in run.cells:
        cell.runs = [SeedResults(seed, {"pretrained": outcomes[seed]}) for seed in compared_seeds(cell.config)]
    if diverged := [f"seed {seed}: {outcome.error}" for seed, outcome in outcomes.items() if outcome.diverged]:
        for cell in run.cells:
            cell.summary.update(cell.runs)
        raise PretrainingDiverged("; ".join(diverged))
    for cell in run.cells:
        after_pretraining(cell, bases, data[cell.name])
        cell.summary.update(cell.runs)
    return bases


def after_pretraining(cell: Cell, bases: dict[int, torch.nn.Module], data: CellData) -> None:
    """Save the first seed's base; make the teacher task's labels; on a shifted task, score every
    base on it before fine-tuning."""
    config, first = cell.config, cell.runs[0].methods
    first["pretrained"] = dataclasses.replace(first["pretrained"], files=save_pretrained(bases[cell.runs[0].seed],
                                                                                         cell.folder))
    if config.finetune.task in TEACHER_TASKS:
        data.task = teach(cell, bases, data)
    if config.finetune.task == "same":
        return
    for result in cell.runs:  # where fine-tuning starts: the base on the task's test set
        result.methods["no_finetune"] = phases.score(bases[result.seed], NO_FINETUNE, data.task.test.of_seed(result.seed),
                                                     phases.tagged(cell.record, seed=result.seed, member=True),
                                                     lr=None, epochs=0, n_train=0).result
    line = phases.member_line("no_finetune", [phases.test_record(result.methods["no_finetune"]) for result in cell.runs])
    print(line)


def teach(cell: Cell, bases: dict[int, torch.nn.Module], data: CellData) -> Splits:
    """The teacher task's splits: each seed's images labelled by its base's teacher
    (loradora/teachers.py); and, in the summary, how far each teacher is from the true labels."""
    settings, seeds = cell.config.finetune, all_seeds(cell.config)
    teachers = teachers_of([bases[seed] for seed in seeds], settings.task, settings.teacher_seed)
    true = [evaluate(teacher, data.mnist.test).percent for teacher in teachers]
    cell.summary.data["teacher"] = {"task": settings.task, "seed": settings.teacher_seed,
                                    "test_accuracy_on_true_labels": true}
    print(f"the teachers score {statistics.fmean(true):.2f}% [{min(true):.2f}, {max(true):.2f}] on the true "
          f"test labels (mean [min, max] over seeds); no_finetune is each base scored against its teacher")
    task = data.task
    return Splits(*(None if split is None else taught(split, teachers, seeds)
                    for split in (task.train, task.test, task.validation)))


# ---- tune ----


def tune(run: Run, data: dict[str, CellData]) -> None:
    """With experiment.lrs, each cell's variants at every rate of the grid on the tuning seeds,
    scored on the validation split, then past the grid's edge with extend_grid (plan.Plan.search);
    per variant the rate with the best mean validation accuracy is its rate for every seed
    (summary["tuning"]). The test set plays no part."""
    cells = [cell for cell in run.cells if cell.config.experiment.lrs]
    for cell in cells:
        config, validation = cell.config, data[cell.name].task.validation
        print(f"\n==== {cell.name + ': ' if cell.name else ''}choosing learning rates on {len(validation):,} "
              f"validation images: {', '.join(f'{lr:g}' for lr in sorted(config.experiment.lrs))}, "
              f"seeds {', '.join(map(str, tuning_seeds(config)))}")

    def inputs(job: Job):
        cell, task = run.cell(job.cell), data[job.cell].task
        return cell.config, JobData(task.train, task.validation, run.bases_of(job)), Output(cell.record, tuning=True)

    done: set[str] = set()
    while planned := [job for cell in cells for job in run.plan.tuning_jobs(cell.name, run.progress)
                      if job.key not in done]:
        if done:
            print(f"\n==== another round: {', '.join(next_round(run, planned))}")
        for job, result in run.execute(planned, inputs):
            done.add(job.key)
            if job.key not in run.kept:
                run.store.save(result)
    for cell in cells:
        choose_rates(run, cell, len(data[cell.name].task.validation))


def next_round(run: Run, planned: list[Job]) -> list[str]:
    """What a later round of tuning tries: a rate past the grid's edge (experiment.extend_grid), or
    a pair of multipliers for the parts at the chosen rate (experiment.b_lr_ratios)."""
    tried = []
    for job in planned:
        configured = run.cell(job.cell).config
        for m in job.members:
            cell = f"{job.cell}: " if job.cell else ""
            parts = m.parts != part_rates(configured, m.variant)
            tried.append(f"{cell}{m.variant.name} at {m.lr:g} with {m.parts.label}" if parts
                         else f"{cell}{m.variant.name} past the grid's edge to {m.lr:g}")
    return list(dict.fromkeys(tried))


def choose_rates(run: Run, cell: Cell, n_validation: int) -> None:
    """The cell's tuning table, and DoRA - LoRA at every rate, into its summary and on the console."""
    config = cell.config
    tuning = run.plan.tuning(cell.name, run.progress).table(config)
    for choice in tuning.values():
        choice["n_validation"] = n_validation
    cell.summary.data["tuning"] = tuning
    print("\n" + format_tuning(tuning))
    if len(tuning_seeds(config)) >= 2:  # a paired interval needs two
        pairs = adapter_pairs({variant.name: variant for variant in finetune_variants(config)})
        sensitivity = cell.summary.data["rate_sensitivity"] = rate_sensitivity(tuning, pairs)
        if sensitivity:
            print("\n" + format_rate_sensitivity(sensitivity, len(tuning_seeds(config))))
    for name, choice in tuning.items():  # for metrics.jsonl and TensorBoard; printed above
        cell.record({"kind": "tuning", "phase": name, "lr": choice["lr"],
                     "validation_accuracy": choice["validation_accuracy"]})


# ---- fine-tune ----


def finetune(run: Run, data: dict[str, CellData], bases: dict[int, torch.nn.Module]) -> None:
    """Every cell's variants on its compared seeds, each at its rate (and at the shared rate beside
    tuned ones), as populations; each result into its seed's results, the first seed's adapters
    saved with their files checked (artifacts.save_method)."""

    def inputs(job: Job):
        cell, task = run.cell(job.cell), data[job.cell].task
        return cell.config, JobData(task.train, task.test, run.bases_of(job)), Output(cell.record)

    planned = [job for cell in run.cells for job in run.plan.finetuning(cell.name, run.progress)]
    for job, result in run.execute(planned, inputs):
        cell = run.cell(job.cell)
        if job.key not in run.kept:
            save_files(cell, job, result, bases, data[cell.name].task.test)
            run.store.save(result)
        seeds = compared_seeds(cell.config)
        for member, outcome in zip(job.members, result.members):
            name, seed = member.variant.name, member.seed
            cell.runs[seeds.index(seed)].methods[name] = outcome.result
            if outcome.decomposition is not None:
                cell.runs[seeds.index(seed)].decomposition[name] = outcome.decomposition
            if outcome.hits is not None:
                cell.summary.hits.add(name, seed, outcome.hits)
        cell.summary.update(cell.runs)


def save_files(cell: Cell, job: Job, result: JobResult, bases: dict[int, torch.nn.Module], test: Split) -> None:
    """The first compared seed's adapters of ``job`` (those whose weights it returned), saved in the
    cell's folder and checked on the test set; their files and checks go into their results."""
    for member, outcome in zip(job.members, result.members):
        if outcome.state is None:
            continue
        model = prepare(bases[member.seed], member.variant.method, **member.variant.adapter)
        model.load_state_dict(outcome.state)
        files, checks = save_method(model, member.variant.name, cell.folder, test.of_seed(member.seed),
                                    base=bases[member.seed])
        outcome.result = dataclasses.replace(outcome.result, files=files, file_checks=checks)
        outcome.state = None  # saved as files; the kept result need not hold it


# ---- compare ----


def compare(run: Run) -> None:
    """Each cell's seeds aggregated: mean +- std per variant, DoRA - LoRA with its intervals and
    verdict (experiment.aggregate); where a tuned rate is the shared one, its runs stand for the
    shared-rate variant too. Which machines trained the jobs goes in too."""
    for cell in run.cells:
        config = cell.config
        rates = run.plan.rates(cell.name, run.progress)
        shared = config.finetune.lr
        if config.experiment.lrs and config.experiment.shared_lr and set(rates.values()) != {shared}:
            for variant in finetune_variants(config):
                if rates[variant.name] == shared:
                    cell.summary.hits.same_as(variant.at_shared_rate().name, variant.name)
                    for result in cell.runs:
                        result.methods[variant.at_shared_rate().name] = dataclasses.replace(
                            result.methods[variant.name], rates="shared", files={}, file_checks=None)
        # the table's order: the variants as configured, each one's shared-rate runs beside it
        order = [name for variant in finetune_variants(config) for name in (variant.name, variant.at_shared_rate().name)]
        for result in cell.runs:
            result.methods = dict(sorted(result.methods.items(),
                                         key=lambda item: order.index(item[0]) if item[0] in order else -1))
        cell.summary.data["jobs"] = jobs_record(run, cell)
        cell.summary.update(cell.runs)
        cell.summary.finish("complete")


def jobs_record(run: Run, cell: Cell) -> dict:
    """How many of the cell's jobs this process trained and how many it kept from before, and the
    machines they ran on (float32 results differ in their last bits from one CPU to the next)."""
    planned = (run.plan.pretraining() + run.plan.tuning_jobs(cell.name, run.progress)
               + run.plan.finetuning(cell.name, run.progress))
    machines = {}
    for job in planned:
        ran_on = run.results[job.key].ran_on
        entry = machines.setdefault(tuple(sorted(ran_on.items())), {**ran_on, "jobs": 0})
        entry["jobs"] += 1
    kept = sum(job.key in run.kept for job in planned)
    return {"total": len(planned), "kept": kept, "trained": len(planned) - kept, "ran_on": list(machines.values())}


# ---- report ----


def report(run: Run) -> None:
    """Each cell's tables (on the console and in table.md), its saved files' checks and its plots; a
    map's table over them all; and how many jobs this process trained."""
    for cell in run.cells:
        summary = cell.summary.data
        print(("\n" if not cell.name else f"\n######## map cell {cell.name} ########\n") + format_report(summary))
        write_atomic(cell.folder / TABLE_FILE, format_markdown(summary))
        first = summary["runs"][0]  # the files are the first seed's
        if artifacts := format_artifacts(first.methods, first.seed):
            print("\n" + artifacts)
        for plot in write_plots(cell.folder):
            print(f"plot: {plot}")
    if run.config.map.rotate_degrees is not None:
        regime_map.write_map(run.folder, run.config, [cell.name for cell in run.cells],
                             time.perf_counter() - run.started)
    print(f"\njobs: {run.trained} trained now, {len(run.kept)} kept from before (in {run.store.folder})")
    print(f"\nresults: {run.folder}/")
