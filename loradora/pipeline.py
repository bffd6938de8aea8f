"""The experiment as it runs: its data, its phases in order, and the summary they fill in.

``Experiment`` holds what every phase of one run needs (the config, the device, the summary, the
metrics sink, the run folder, the launcher and the pretrained-base cache), so its methods take
only what differs between calls. A phase is the pretraining or one fine-tuning variant; how one
phase trains and is scored is in loradora/phases.py, what it measures is a loradora/results.py
record.

A run goes phase by phase (``Experiment.run``): every seed's pretraining, then each fine-tuning
variant for every seed, each phase's models trained at once as populations (loradora/population.py;
a population of one is a model trained alone), each where the launcher puts it.
"""

import dataclasses
import gc
import shutil
import statistics
import sys
from dataclasses import dataclass
from types import SimpleNamespace
from pathlib import Path

import torch

from loradora import data, phases
from loradora.adapters import ADAPTERS
from loradora.artifacts import format_artifacts, save_method, save_pretrained
from loradora.cache import BaseCache, Cached
from loradora.config import Config, ConfigError, resolve_device, to_dict, to_yaml
from loradora.data import DataUnavailable, Split, hold_out
from loradora.experiment import (EXTEND_STEPS, NO_FINETUNE, PRETRAINED, Variant, adapter_pairs, aggregate,
                                 choose_rate, decomposition_result, extended_rate, finetune_variants, grid_edge,
                                 mean_accuracies, rate_sensitivity, variant_groups)
from loradora.files import WriteFailed, write_atomic, write_json
from loradora.launcher import LauncherUnavailable, LocalLauncher, make_launcher
from loradora.model import initial_base
from loradora.plots import write_plots
from loradora.per_image import ImageHits
from loradora.population import population_chunks
from loradora.report import format_rate_sensitivity, format_report, format_tuning
from loradora.results import MethodResult, SeedResults
from loradora.run_folder import MetricsLog, OutputUnavailable, create_run_dir, environment
from loradora.stops import Received, stop_on_signals
from loradora.choices import TEACHER_TASKS
from loradora.tasks import shift_split, task_label, taught, teachers_of
from loradora.tensorboard import TensorBoardLog, TensorBoardUnavailable, require_tensorboard
from loradora.training import evaluate, use_deterministic_algorithms


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


HITS_FILE = "test_correct.pt"  # per variant and seed, the test images it got right, bit-packed (per_image.py)


@dataclass
class Splits:
    train: Split
    test: Split
    validation: Split | None  # held out of the training images (data.validation_size), or None


def load_data(config: Config, device: torch.device) -> tuple[Splits, Splits]:
    """MNIST for pretraining, and the same images as the fine-tuning task sees them."""
    options = dict(root=config.data.root, device=device, download=config.data.download)
    train_data = data.load_mnist(train=True, subset=config.data.train_subset, **options)
    validation = None
    if config.data.validation_size:
        train_data, validation = hold_out(train_data, config.data.validation_size, config.data.validation_seed)
    mnist = Splits(train_data, data.load_mnist(train=False, subset=config.data.test_subset, **options), validation)
    held = f", {len(validation):,} held out for validation" if validation is not None else ""
    print(f"MNIST: {len(mnist.train):,} training{held} and {len(mnist.test):,} test images, on {device}")
    settings = config.finetune

    def shift(split: Split | None) -> Split | None:
        return None if split is None else shift_split(split, settings.task, settings.rotate_degrees,
                                                      settings.permutation_seed)

    if settings.task != "same":
        label = task_label(settings.task, settings.rotate_degrees, settings.permutation_seed, settings.teacher_seed)
        print(f"fine-tuning task: {label}, training, validation and test images alike")
    task = Splits(shift(mnist.train), shift(mnist.test), shift(mnist.validation))
    if settings.train_subset is None and not settings.validation_size:
        return mnist, task
    # The fine-tuning set (and its validation split) drawn from the task's training images, the
    # pool; pretraining keeps every image, so each size adapts the same base (issue 19's map).
    train, validation = data.draw(task.train, settings.train_subset, settings.validation_size, settings.subset_seed)
    validation = validation if settings.validation_size else task.validation
    print(f"fine-tuning on {len(train):,} of the task's {len(task.train):,} training images (finetune.train_subset, "
          f"draw {settings.subset_seed})" + (f", {len(validation):,} more for validation" if settings.validation_size else ""))
    return mnist, Splits(train, task.test, validation)


class Experiment:
    """One run: ``run`` trains every phase and fills ``summary`` as it goes.

    ``record`` receives every metrics record. A method that diverges is recorded as such and the
    others still run; a pretraining that diverges leaves nothing to fine-tune. With ``run_dir`` the
    first seed's models and adapters are saved there too (benchmarks leave it out).
    """

    def __init__(self, config: Config, device: torch.device, summary: Summary, record=lambda metrics: None,
                 run_dir: Path | None = None, launcher=None):
        self.config, self.device, self.summary, self.record, self.run_dir = config, device, summary, record, run_dir
        self.launcher = launcher or LocalLauncher()
        self.cache = BaseCache(config, device) if config.cache.enabled else None
        self.variants = finetune_variants(config)
        self.seeds = config.experiment.seeds or [config.seed]  # the compared seeds: runs[i] is seeds[i]
        self.tuning_seeds = config.experiment.tuning_seeds or self.seeds  # overlap: only when configured so
        # every seed with a base: the compared ones first, so bases[i] is runs[i]'s; then those that only tune
        self.all_seeds = self.seeds + [seed for seed in self.tuning_seeds if seed not in self.seeds]

    def run(self) -> None:
        """Phase by phase: every seed's pretraining, then each fine-tuning method at each rank
        bucket for every seed. A phase trains its seeds (and a sweep's ranks) as populations of
        ``experiment.population`` models at once (1: one model after another, each exactly as it
        trains alone, ``training.OneModel``).

        With ``experiment.lrs``, each variant first trains at every rate of the grid on the tuning
        seeds and is scored on the validation split; the rate with the best mean validation accuracy
        is its rate for every seed (summary["tuning"]). The test set is scored only after that
        choice, at the chosen rates, and at the shared ``finetune.lr`` as "<variant>@shared".

        Each phase (the pretraining, the tuning, a method at a rank bucket) submits all its
        populations to the launcher before it collects the first, then collects them in order.
        """
        config, summary = self.config, self.summary
        mnist, task = load_data(config, self.device)
        runs = [SeedResults(seed) for seed in self.seeds]
        bases, pretrained = self.pretrain(mnist)  # compared seeds' first, then the tuning seeds'
        for result, outcome in zip(runs, pretrained):
            result.methods["pretrained"] = outcome
        if any(outcome.diverged for outcome in pretrained):
            summary.update(runs)
            summary.finish("pretraining diverged")
            return
        if config.finetune.task in TEACHER_TASKS:
            task = self.teach(bases, mnist, task)
        self.after_pretraining(runs, bases, task)
        summary.update(runs)

        rates = {variant.name: config.finetune.lr for variant in self.variants}
        if config.experiment.lrs:
            tuning = summary.data["tuning"] = self.tune_learning_rates(bases, task)
            print("\n" + format_tuning(tuning))
            if len(self.tuning_seeds) >= 2:  # a paired interval needs two
                pairs = adapter_pairs({variant.name: SimpleNamespace(**variant.settings()) for variant in self.variants})
                summary.data["rate_sensitivity"] = rate_sensitivity(tuning, pairs)
                if summary.data["rate_sensitivity"]:
                    print("\n" + format_rate_sensitivity(summary.data["rate_sensitivity"], len(self.tuning_seeds)))
            for name, choice in tuning.items():  # for metrics.jsonl and TensorBoard; printed above
                self.record({"kind": "tuning", "phase": name, "lr": choice["lr"],
                             "validation_accuracy": choice["validation_accuracy"]})
            rates = {name: choice["lr"] for name, choice in tuning.items()}
        # with tuning, also every variant at the shared rate, as configured (unless turned off, or the
        # grid chose that rate for every variant)
        shared_too = (config.experiment.lrs and config.experiment.shared_lr
                      and set(rates.values()) != {config.finetune.lr})
        for variants in variant_groups(config):  # a method, at the ranks of one bucket
            self.finetune(runs, bases, task, variants, rates, self.run_dir)
            if shared_too:
                self.at_shared_rate(runs, bases, task, variants, rates)
        # the table's order: the variants as configured, each one's shared-rate runs beside it
        order = [name for variant in self.variants for name in (variant.name, variant.at_shared_rate().name)]
        for result in runs:
            result.methods = dict(sorted(result.methods.items(),
                                         key=lambda item: order.index(item[0]) if item[0] in order else -1))
        summary.update(runs)
        summary.finish("complete")

    def at_shared_rate(self, runs: list[SeedResults], bases: list, task: Splits, variants: list[Variant],
                       rates: dict[str, float]) -> None:
        """``variants`` at the shared ``finetune.lr`` as "<variant>@shared", for every seed: trained
        where the grid chose another rate, the tuned runs themselves where it chose that one."""
        shared = self.config.finetune.lr
        again = [variant.at_shared_rate() for variant in variants if rates[variant.name] != shared]
        if again:
            self.finetune(runs, bases, task, again, {variant.name: shared for variant in again}, None)
        for variant in variants:
            if rates[variant.name] == shared:
                self.summary.hits.same_as(variant.at_shared_rate().name, variant.name)
                for result in runs:
                    tuned = result.methods[variant.name]
                    result.methods[variant.at_shared_rate().name] = dataclasses.replace(
                        tuned, rates="shared", files={}, file_checks=None)

    def finetune(self, runs: list[SeedResults], bases: list, task: Splits, variants: list[Variant],
                             rates: dict[str, float], run_dir: Path | None) -> None:
        """Fine-tune ``variants`` for every seed, each at its rate, as populations; results into ``runs``."""
        config, launcher = self.config, self.launcher
        seeds = [result.seed for result in runs]
        members = [(i, variant) for variant in variants for i in range(len(runs))]
        every = config.analysis.every_n_batches
        submitted = []
        for chunk in population_chunks(members, config.experiment.population, self.device):
            tuned = [phases.start_variant(bases[i], variant, seeds[i], track=bool(every)) for i, variant in chunk]
            job = phases.population_job([t.model for t in tuned], config.finetune, task.train,
                                        [seeds[i] for i, _ in chunk], config.log.every_n_batches, config.precision,
                                        [t.tracker for t in tuned], every,
                                        lrs=[rates[variant.name] for _, variant in chunk], steps=config.finetune.steps)
            submitted.append((chunk, tuned, launcher.submit(job)))
        for chunk, tuned, pending in submitted:
            outcomes = phases.fit(launcher, pending, [variant for _, variant in chunk], task.test,
                                             self.record)
            for (i, variant), member, outcome in zip(chunk, tuned, outcomes):
                finish_variant(runs[i], variant, member, outcome.result, task.test.of_seed(seeds[i]), bases[0],
                               run_dir if i == 0 else None)
                if outcome.hits is not None:
                    self.summary.hits.add(variant.name, seeds[i], outcome.hits)
            self.summary.update(runs)

    def tune_learning_rates(self, bases: list, task: Splits) -> dict:
        """Each variant at every rate of ``experiment.lrs`` on the tuning seeds, scored on the
        validation split; per variant the rate with the best mean validation accuracy (ties: the
        smaller rate). A rate at which any tuning seed diverged is not chosen. With
        ``experiment.extend_grid``, a variant whose best rate is at its grid's edge also trains one
        rate past that edge (``extended_rate``), up to ``EXTEND_STEPS`` times, until its best rate is
        inside. The test set plays no part."""
        config = self.config
        grid = sorted(config.experiment.lrs)
        print(f"\n==== choosing learning rates on {len(task.validation):,} validation images: "
              f"{', '.join(f'{lr:g}' for lr in grid)}, seeds {', '.join(map(str, self.tuning_seeds))}")
        grids = {variant.name: list(grid) for variant in self.variants}
        accuracies = self.validation_accuracies(grids, bases, task)  # (name, rate) -> per tuning seed

        def means(name: str) -> dict[float, float | None]:
            return mean_accuracies({lr: accuracies[name, lr] for lr in grids[name]})

        for _ in range(EXTEND_STEPS if config.experiment.extend_grid else 0):
            beyond = {}
            for name, rates in grids.items():
                edge = grid_edge(rates, choose_rate(means(name)))
                if edge:
                    beyond[name] = [extended_rate(rates, edge)]
            if not beyond:
                break
            print(f"\n==== extending the grid past its edge: "
                  f"{', '.join(f'{name} to {rates[0]:g}' for name, rates in beyond.items())}")
            accuracies |= self.validation_accuracies(beyond, bases, task)
            for name, rates in beyond.items():
                grids[name] = sorted(grids[name] + rates)
        tuning = {}
        for name, rates in grids.items():
            mean = means(name)
            chosen = choose_rate(mean)
            tuning[name] = {"lr": chosen, "grid": rates, "edge": grid_edge(rates, chosen),
                            "extended": [lr for lr in rates if lr not in grid],
                            "validation_accuracy": {f"{lr:g}": mean[lr] for lr in rates},
                            "validation_accuracies": {f"{lr:g}": accuracies[name, lr] for lr in rates},
                            "seeds": self.tuning_seeds, "n_validation": len(task.validation),
                            "compared_too": sorted(set(self.tuning_seeds) & set(self.seeds))}
        return tuning

    def validation_accuracies(self, grids: dict[str, list[float]], bases: list,
                              task: Splits) -> dict[tuple[str, float], list[float | None]]:
        """Each variant named in ``grids`` trained at each of its rates on every tuning seed, as
        populations all submitted at once: (name, rate) -> validation accuracy per tuning seed,
        None where that seed diverged."""
        config, launcher, seeds = self.config, self.launcher, self.all_seeds
        submitted = []
        for variants in variant_groups(config):
            members = [(variant, lr, seeds.index(seed)) for variant in variants if variant.name in grids
                       for lr in grids[variant.name] for seed in self.tuning_seeds]
            for chunk in population_chunks(members, config.experiment.population, self.device):
                models = [phases.start_variant(bases[i], variant, seeds[i], track=False).model
                          for variant, _, i in chunk]
                job = phases.population_job(models, config.finetune, task.train, [seeds[i] for *_, i in chunk],
                                            config.log.every_n_batches, config.precision,
                                            lrs=[lr for _, lr, _ in chunk], steps=config.finetune.steps)
                submitted.append((chunk, launcher.submit(job)))
        accuracies = {}
        for chunk, pending in submitted:
            names = [f"{variant.name}@lr={lr:g}" for variant, lr, _ in chunk]
            trained = phases.collect(launcher, pending, names, phases.tagged(self.record, tuning=True))
            for (variant, lr, i), model, member in zip(chunk, pending.job.models, trained):
                accuracy = None if member.diverged else evaluate(model, task.validation.of_seed(seeds[i])).percent
                accuracies.setdefault((variant.name, lr), []).append(accuracy)
        return accuracies

    def pretrain(self, mnist: Splits) -> tuple[list[torch.nn.Module], list[MethodResult]]:
        """Every seed's base, pretrained as populations or reused from the cache, and its result. A
        population's members are cached under a key naming the whole population, since a member's
        float32 bits depend on which models share its matmuls: one damaged member retrains them all."""
        config, seeds, cache = self.config, self.all_seeds, self.cache
        bases = [initial_base(config.model.hidden_sizes, seed, self.device) for seed in seeds]
        submitted = []  # per population: its cache paths, and its training or its cached bases
        for chunk in population_chunks(list(range(len(seeds))), config.experiment.population, self.device):
            chunk_seeds = [seeds[i] for i in chunk]
            paths = [cache.path(seed, chunk_seeds) for seed in chunk_seeds] if cache is not None else []
            cached = [cache.read(path, bases[i]) for i, path in zip(chunk, paths)]
            if paths and None not in cached:
                submitted.append((chunk, paths, cached))
                continue
            job = phases.population_job([bases[i] for i in chunk], config.pretrain, mnist.train, chunk_seeds,
                                        config.log.every_n_batches, config.precision)
            submitted.append((chunk, paths, self.launcher.submit(job)))
        results = [None] * len(seeds)
        for chunk, paths, pending in submitted:
            if isinstance(pending, list):
                for i, path, cached in zip(chunk, paths, pending):
                    results[i] = self.reuse_pretrained(bases[i], cached, path, mnist,
                                                       phases.tagged(self.record, seed=seeds[i]))
                continue
            kept = phases.Kept(self.record)  # each member's records, cached with its weights
            outcomes = phases.fit(self.launcher, pending, [PRETRAINED] * len(chunk), mnist.test, kept)
            for i, outcome, path in zip(chunk, [scored.result for scored in outcomes], paths or [None] * len(chunk)):
                results[i] = outcome
                if path is not None and not outcome.diverged:
                    cache.save(path, bases[i], [metrics for metrics in kept.records if metrics["seed"] == seeds[i]])
        return bases, results

    # ---- what both paths share ----

    def reuse_pretrained(self, model, cached: Cached, path: Path, mnist: Splits, record) -> MethodResult:
        """Load the ``cached`` base (read from ``path``) into ``model``, replay its training records,
        and test it."""
        print(f"\n== pretrained: reusing pretrained base from {path} (same data, model, pretrain settings, seed)")
        records = cached.load_into(model)
        for metrics in records:
            record({**metrics, "cached": True})  # its curve, for the plots; show() leaves them unprinted
        settings = self.config.pretrain
        return phases.score(model, PRETRAINED, mnist.test, record, lr=settings.lr, epochs=settings.epochs,
                            n_train=len(mnist.train), epoch_records=[r for r in records if r["kind"] == "epoch"],
                            cached=True).result

    def teach(self, bases: list, mnist: Splits, task: Splits) -> Splits:
        """The teacher task's splits: each seed's images labelled by its base's teacher
        (loradora/teachers.py); and, in the summary, how far each teacher is from the true labels."""
        settings = self.config.finetune
        teachers = teachers_of(bases, settings.task, settings.teacher_seed)
        true = [evaluate(teacher, mnist.test).percent for teacher in teachers]
        self.summary.data["teacher"] = {"task": settings.task, "seed": settings.teacher_seed,
                                        "test_accuracy_on_true_labels": true}
        print(f"the teachers score {statistics.fmean(true):.2f}% [{min(true):.2f}, {max(true):.2f}] on the true "
              f"test labels (mean [min, max] over seeds); no_finetune is each base scored against its teacher")
        seeds = list(self.all_seeds)
        return Splits(*(None if split is None else taught(split, teachers, seeds)
                        for split in (task.train, task.test, task.validation)))

    def after_pretraining(self, runs: list[SeedResults], bases: list, task: Splits) -> None:
        """Save the first seed's base; on a shifted task, score every base on it before fine-tuning."""
        if self.run_dir is not None:
            first = runs[0].methods
            first["pretrained"] = dataclasses.replace(first["pretrained"], files=save_pretrained(bases[0], self.run_dir))
        if self.config.finetune.task == "same":
            return
        for result, model in zip(runs, bases):  # where fine-tuning starts: the base on the task's test set
            result.methods["no_finetune"] = phases.score(model, NO_FINETUNE, task.test.of_seed(result.seed),
                                                         phases.tagged(self.record, seed=result.seed, member=True),
                                                         lr=None, epochs=0, n_train=0).result
        phases.show_members("no_finetune", [phases.test_record(result.methods["no_finetune"]) for result in runs])


def finish_variant(result: SeedResults, variant: Variant, tuned: phases.Tuned, outcome: MethodResult,
                   test_data: Split, base: torch.nn.Module, run_dir: Path | None) -> None:
    """Check a fine-tuned variant and add it to its seed's ``result``; with ``run_dir``, save it."""
    phases.assert_unchanged(tuned.model, tuned.frozen, variant.name)
    if not outcome.diverged and tuned.tracker is not None:
        result.decomposition[variant.name] = decomposition_result(tuned.tracker)
    if not outcome.diverged and run_dir is not None and variant.method in ADAPTERS:
        files, checks = save_method(tuned.model, variant.name, run_dir, test_data, base=base)
        outcome = dataclasses.replace(outcome, files=files, file_checks=checks)
    result.methods[variant.name] = outcome


# ---- the run as the command line starts it ----


def execute(config: Config) -> int:
    """Run the experiment ``config`` describes, in a new run folder; the exit code
    (dora_example.EXIT_CODES). Stop signals end it cleanly (loradora/stops.py)."""
    # The imports leave some 230,000 objects that live until exit; frozen, no collection scans
    # them again, and the interpreter's exit is 0.4 s shorter (BENCHMARKS.md, start-up).
    gc.freeze()
    try:
        device = resolve_device(config.device)
        if config.log.tensorboard:
            require_tensorboard()  # a missing package stops the run before its folder is made
        # so do a missing ray package and a cluster that cannot be joined
        launcher = make_launcher(config.experiment.launcher, config.ray.address, device)
    except (ConfigError, TensorBoardUnavailable, LauncherUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with stop_on_signals() as received:  # after the launcher: ray.init sets a SIGTERM handler of its own
        try:
            return in_run_folder(config, device, launcher, received)
        finally:
            launcher.close()  # a Ray runtime started for the run goes, with its workers


def in_run_folder(config: Config, device: torch.device, launcher, received: Received) -> int:
    """The run from its folder on: make it, run the experiment, report; ``execute``'s exit code."""
    try:
        run_dir = create_run_dir(config.output.dir, config.output.run_name)
    except OutputUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    resolved = to_yaml(config)
    print(resolved)
    if config.deterministic:
        use_deterministic_algorithms()
    summary = Summary(config, device, run_dir / "summary.json")
    sinks = [phases.show, MetricsLog(run_dir / "metrics.jsonl")]  # each gets every metrics record
    board = TensorBoardLog(run_dir / "tensorboard") if config.log.tensorboard else None
    if board is not None:
        sinks.append(board)

    def record(metrics: dict) -> None:
        for sink in sinks:
            sink(metrics)

    try:
        write_atomic(run_dir / "config.yaml", resolved)
        Experiment(config, device, summary, record, run_dir, launcher).run()
        report(summary, run_dir)
    except DataUnavailable as error:  # raised while loading MNIST, before anything is trained
        if board is not None:
            board.close()
        shutil.rmtree(run_dir)  # so an empty run folder is not left behind to be mistaken for a result
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as error:
        stop = received.stop(error)
        print(f"\ninterrupted by {stop.name}: {summary.close('interrupted')}", file=sys.stderr)
        return stop.exit_code
    except WriteFailed as error:
        print(f"error: {error}; {summary.close('write failed')}", file=sys.stderr)
        return 1
    finally:
        if board is not None:
            board.close()
    return 0 if summary.data["status"] == "complete" else 1


def report(summary: Summary, run_dir: Path) -> None:
    """The tables, the saved files' checks and the plots of a run that has ended."""
    print("\n" + format_report(summary.data))
    if artifacts := format_artifacts(summary.data["runs"][0].methods):  # the files are the first seed's
        print("\n" + artifacts)
    for plot in write_plots(run_dir):
        print(f"plot: {plot}")
    print(f"\nresults: {run_dir}/")
