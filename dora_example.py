"""LoRA vs DoRA on MNIST: pretrain an MLP, fine-tune a LoRA and a DoRA copy of it, compare.

    python dora_example.py                                   # configs/default.yaml
    python dora_example.py --config configs/smoke.yaml       # seconds, on a data subset
    python dora_example.py lora.rank=8 dora.alpha=16         # any key, as key.sub=value
    python dora_example.py --config configs/seeds.yaml       # 5 seeds: does DoRA beat LoRA?

The pipeline: load MNIST onto the device (and shift it, when finetune.task asks for it); for each
seed, pretrain the MLP with every weight trainable, or reuse the base an earlier run pretrained
from the same inputs; then for each fine-tuning method (lora, dora, and the baselines full and
head), at each rank of a sweep, copy the pretrained model, make trainable what the method trains,
fine-tune it while recording how its weights move (DoRA section 3.2), and measure accuracy on the
whole test set. Finally aggregate the seeds (mean +- std, DoRA - LoRA with a 95% interval and a
verdict) and draw the plots. With several seeds, each phase trains all its seeds at once as a
population (loradora/population.py); with experiment.lrs, each method's learning rate is first
chosen on a validation split held out of the training images. How one phase trains and is scored
is in loradora/phases.py; what it measures is a loradora/results.py record. Results go to
results/<run_name>/ (config.yaml, metrics.jsonl, summary.json, *.png, and the first seed's models
and adapters).
"""

from __future__ import annotations  # the annotations name torch, which is imported later

import argparse
import dataclasses
import gc
import shutil
import statistics
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from loradora.config import Config, ConfigError, load_config, to_dict, to_yaml, trains_populations
from loradora.stops import stop_from, stop_on_signals

PROJECT = Path(__file__).resolve().parent  # the defaults live here: configs/, data/, results/
DEFAULT_CONFIG = PROJECT / "configs" / "default.yaml"
PATH_RULE = ("Relative paths typed on the command line (--config, data.root=, output.dir=, cache.dir=) are "
             "relative to the current folder; the defaults, and paths written in a config file, are "
             f"relative to the project folder ({PROJECT}): data/ and results/ are found there from anywhere.")


def import_pipeline() -> None:
    """Import torch and the modules built on it, as this module's globals.

    Deferred from the top of the file so that --help and a bad config answer before torch loads
    (over a second; BENCHMARKS.md). main() calls it once the config is good; a program that imports
    this module to call run() calls it first.
    """
    global torch, ADAPTERS, decomposition_result, NO_FINETUNE, PRETRAINED, Variant, choose_rate, aggregate
    global finetune_variants, variant_groups, format_artifacts, save_method, save_pretrained, BaseCache, Cached
    global resolve_device, DataUnavailable, Split, hold_out, load_mnist
    global LauncherUnavailable, LocalLauncher, make_launcher, MLP, phases, write_plots, population_chunks
    global format_report, format_tuning, MethodResult, SeedResults, MetricsLog, OutputUnavailable, create_run_dir
    global environment, write_atomic, write_json, WriteFailed, shift_split, task_label, TensorBoardLog, TensorBoardUnavailable
    global require_tensorboard, evaluate, use_deterministic_algorithms
    import torch

    from loradora import phases
    from loradora.adapters import ADAPTERS
    from loradora.artifacts import format_artifacts, save_method, save_pretrained
    from loradora.cache import BaseCache, Cached
    from loradora.config import resolve_device
    from loradora.data import DataUnavailable, Split, hold_out, load_mnist
    from loradora.experiment import (NO_FINETUNE, PRETRAINED, Variant, aggregate, choose_rate, decomposition_result,
                                     finetune_variants, variant_groups)
    from loradora.files import WriteFailed, write_atomic, write_json
    from loradora.launcher import LauncherUnavailable, LocalLauncher, make_launcher
    from loradora.model import MLP
    from loradora.plots import write_plots
    from loradora.population import population_chunks
    from loradora.report import format_report, format_tuning
    from loradora.results import MethodResult, SeedResults
    from loradora.run_folder import MetricsLog, OutputUnavailable, create_run_dir, environment
    from loradora.tasks import shift_split, task_label
    from loradora.tensorboard import TensorBoardLog, TensorBoardUnavailable, require_tensorboard
    from loradora.training import evaluate, use_deterministic_algorithms


EXIT_CODES = {
    0: "done",
    1: "no usable data, the pretraining diverged, or a result file could not be written",
    2: "bad config or output folder: nothing was written",
    130: "stopped by Ctrl-C (SIGINT): finished phases kept, summary.json marked interrupted",
    143: "stopped by SIGTERM (Slurm, Kubernetes, Ray, systemd, timeout): the same",
}


def main(argv: list[str] | None = None) -> int:
    """The command line; returns an exit code (EXIT_CODES)."""
    args = parse_args(argv)
    try:
        config = load_config(args.config, args.overrides, project=PROJECT)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import_pipeline()
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
    with stop_on_signals():  # after the launcher: ray.init sets a SIGTERM handler of its own
        try:
            return start(config, device, launcher)
        finally:
            launcher.close()  # a Ray runtime started for the run goes, with its workers


def start(config: Config, device: torch.device, launcher) -> int:
    """The run from its folder on: make it, run the experiment, report; main's exit code."""
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
        run(config, device, summary, record, run_dir, launcher)
        report(summary, run_dir)
    except DataUnavailable as error:  # raised while loading MNIST, before anything is trained
        if board is not None:
            board.close()
        shutil.rmtree(run_dir)  # so an empty run folder is not left behind to be mistaken for a result
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as error:
        stop = stop_from(error)
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    codes = "\n".join(f"  {code:<3}  {meaning}" for code, meaning in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        description="Pretrain an MLP on MNIST, fine-tune LoRA and DoRA copies of it, compare them.",
        epilog=f"{textwrap.fill(PATH_RULE, 100)}\n\nExample: python dora_example.py lora.rank=8 dora.alpha=16 "
               f"output.run_name=r8\n\nExit codes:\n{codes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, type=Path,
                        help="YAML file; keys it leaves out keep their defaults (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="set any config key, e.g. finetune.epochs=3 finetune.methods=[dora]")
    return parser.parse_args(argv)


class Summary:
    """summary.json as the run fills it in: saved after every phase (with ``path``), so an
    interruption keeps what has finished; ``status`` stays "running" until the run ends."""

    def __init__(self, config: Config, device: torch.device, path: Path | None = None):
        self.path, self.margin = path, config.experiment.margin
        self.data = {"status": "running", "methods": {}, "config": to_dict(config), "env": environment(device)}

    def update(self, runs: list[SeedResults]) -> None:
        """The seeds' results so far (the last may be partial), aggregated (experiment.aggregate)."""
        self.data.update(aggregate([run for run in runs if run.methods], self.margin))
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
            write_json(self.path, self.data)


def run(config: Config, device: torch.device, summary: Summary, record=lambda metrics: None,
        run_dir: Path | None = None, launcher=None) -> None:
    """The whole experiment, filling ``summary`` as it goes.

    ``record`` receives every metrics record. A method that diverges is recorded as such and the
    others still run; a pretraining that diverges leaves nothing to fine-tune. With ``run_dir`` the
    first seed's models and adapters are saved there too (benchmarks leave it out). One seed, or
    ``experiment.population: 1``, trains one model after another (``run_once`` per seed); else each
    phase trains its seeds (and a sweep's ranks) as populations (``run_populations``), each where
    ``launcher`` puts it (loradora/launcher.py; default: here, one after another).
    """
    mnist, task = load_data(config, device)
    seeds = config.experiment.seeds or [config.seed]
    cache = BaseCache(config, device) if config.cache.enabled else None
    if trains_populations(config):
        run_populations(config, seeds, summary, mnist, task, device, cache, record, run_dir,
                        launcher or LocalLauncher())
        return
    runs = []
    for i, seed in enumerate(seeds, 1):
        if len(seeds) > 1:
            print(f"\n==== seed {seed} ({i} of {len(seeds)})")
        result = run_once(config, seed, mnist, task, device, cache, phases.tagged(record, seed=seed),
                          progress=lambda partial: summary.update([*runs, partial]), run_dir=run_dir if i == 1 else None)
        runs.append(result)
        if result.methods["pretrained"].diverged:
            summary.finish("pretraining diverged")
            return
    summary.finish("complete")


@dataclass
class Splits:
    train: Split
    test: Split
    validation: Split | None  # held out of the training images (data.validation_size), or None


def load_data(config: Config, device: torch.device) -> tuple[Splits, Splits]:
    """MNIST for pretraining, and the same images as the fine-tuning task sees them."""
    options = dict(root=config.data.root, device=device, download=config.data.download)
    train_data = load_mnist(train=True, subset=config.data.train_subset, **options)
    validation = None
    if config.data.validation_size:
        train_data, validation = hold_out(train_data, config.data.validation_size, config.data.validation_seed)
    mnist = Splits(train_data, load_mnist(train=False, subset=config.data.test_subset, **options), validation)
    held = f", {len(validation):,} held out for validation" if validation is not None else ""
    print(f"MNIST: {len(mnist.train):,} training{held} and {len(mnist.test):,} test images, on {device}")
    settings = config.finetune

    def shift(split: Split | None) -> Split | None:
        return None if split is None else shift_split(split, settings.task, settings.rotate_degrees,
                                                      settings.permutation_seed)

    if settings.task != "same":
        print(f"fine-tuning task: {task_label(settings.task, settings.rotate_degrees, settings.permutation_seed)}"
              f", training, validation and test images alike")
    return mnist, Splits(shift(mnist.train), shift(mnist.test), shift(mnist.validation))


def run_once(config: Config, seed: int, mnist: Splits, task: Splits, device: torch.device, cache: BaseCache | None,
             record, progress, run_dir: Path | None) -> SeedResults:
    """One seed: pretrain (or reuse) the base, then fine-tune every variant from it. ``progress``
    gets the seed's results so far after each phase."""
    result = SeedResults(seed)
    torch.manual_seed(seed)
    base = MLP(config.model.hidden_sizes).to(device)
    result.methods["pretrained"] = pretrain(base, config, seed, mnist, cache, record)
    if not result.methods["pretrained"].diverged:
        after_pretraining(config, [result], [base], task, record, run_dir)
    progress(result)
    if result.methods["pretrained"].diverged:
        return result
    for variant in finetune_variants(config):
        tuned = phases.start_variant(base, variant, seed, track=bool(config.analysis.every_n_batches))
        outcome = phases.fit(tuned.model, variant, config.finetune, task.train, task.test, seed, record,
                             config.log.every_n_batches, tuned.tracker, config.analysis.every_n_batches)
        finish_variant(result, variant, tuned, outcome, task.test, base, run_dir)
        progress(result)
    return result


def run_populations(config: Config, seeds: list[int], summary: Summary, mnist: Splits, task: Splits,
                    device: torch.device, cache: BaseCache | None, record, run_dir: Path | None, launcher) -> None:
    """``run`` phase by phase: every seed's pretraining, then each fine-tuning method at each rank
    bucket for every seed, each as populations of ``experiment.population`` models trained at once.

    With ``experiment.lrs``, each variant first trains at every rate of the grid on the tuning seeds
    and is scored on the validation split; the rate with the best mean validation accuracy is its
    rate for every seed (summary["tuning"]). The test set is scored only after that choice, at the
    chosen rates, and at the shared ``finetune.lr`` as "<variant>@shared" for comparison.

    Each phase (the pretraining, the tuning, a method at a rank bucket) submits all its populations
    to ``launcher`` before it collects the first, then collects and reports them in order.
    """
    runs = [SeedResults(seed) for seed in seeds]
    bases, pretrained = pretrain_populations(config, seeds, mnist, device, cache, record, launcher)
    for result, outcome in zip(runs, pretrained):
        result.methods["pretrained"] = outcome
    if any(outcome.diverged for outcome in pretrained):
        summary.update(runs)
        summary.finish("pretraining diverged")
        return
    after_pretraining(config, runs, bases, task, phases.tagged(record, member=True), run_dir)
    phases.show_members("no_finetune", [phases.test_record(result.methods["no_finetune"]) for result in runs
                                        if "no_finetune" in result.methods])
    summary.update(runs)

    rates = {variant.name: config.finetune.lr for variant in finetune_variants(config)}
    if config.experiment.lrs:
        tuning = summary.data["tuning"] = tune_learning_rates(config, seeds, bases, task, device, record, launcher)
        print("\n" + format_tuning(tuning))
        for name, choice in tuning.items():  # for metrics.jsonl and TensorBoard; printed above
            record({"kind": "tuning", "phase": name, "lr": choice["lr"],
                    "validation_accuracy": choice["validation_accuracy"]})
        rates = {name: choice["lr"] for name, choice in tuning.items()}
    # with tuning, also every variant at the shared rate, as configured (unless turned off, or the
    # grid chose that rate for every variant)
    shared_too = (config.experiment.lrs and config.experiment.shared_lr
                  and set(rates.values()) != {config.finetune.lr})
    for variants in variant_groups(config):  # a method, at the ranks of one bucket
        finetune_populations(config, runs, bases, task, variants, rates, device, record, summary, run_dir, launcher)
        if shared_too:
            at_shared_rate(config, runs, bases, task, variants, rates, device, record, summary, launcher)
    # the table order of a one-seed-at-a-time run, each variant's shared-rate runs beside it
    order = [name for variant in finetune_variants(config) for name in (variant.name, f"{variant.name}@shared")]
    for result in runs:
        result.methods = dict(sorted(result.methods.items(),
                                     key=lambda item: order.index(item[0]) if item[0] in order else -1))
    summary.update(runs)
    summary.finish("complete")


def at_shared_rate(config: Config, runs: list[SeedResults], bases: list, task: Splits, variants: list[Variant],
                   rates: dict[str, float], device: torch.device, record, summary: Summary, launcher) -> None:
    """``variants`` at the shared ``finetune.lr`` as "<variant>@shared", for every seed: trained
    where the grid chose another rate, the tuned runs themselves where it chose that one."""
    shared = config.finetune.lr
    again = [dataclasses.replace(variant, name=f"{variant.name}@shared") for variant in variants
             if rates[variant.name] != shared]
    if again:
        finetune_populations(config, runs, bases, task, again, {variant.name: shared for variant in again},
                             device, record, summary, None, launcher)
    for variant in variants:
        if rates[variant.name] == shared:
            for result in runs:
                tuned = result.methods[variant.name]
                result.methods[f"{variant.name}@shared"] = dataclasses.replace(tuned, files={}, file_checks=None)


def finetune_populations(config: Config, runs: list[SeedResults], bases: list, task: Splits,
                         variants: list[Variant], rates: dict[str, float], device: torch.device, record,
                         summary: Summary, run_dir: Path | None, launcher) -> None:
    """Fine-tune ``variants`` for every seed, each at its rate, as populations; results into ``runs``."""
    seeds = [result.seed for result in runs]
    members = [(i, variant) for variant in variants for i in range(len(runs))]
    every = config.analysis.every_n_batches
    submitted = []
    for chunk in population_chunks(members, config.experiment.population, device):
        tuned = [phases.start_variant(bases[i], variant, seeds[i], track=bool(every)) for i, variant in chunk]
        job = phases.population_job([t.model for t in tuned], config.finetune, task.train, [seeds[i] for i, _ in chunk],
                                    config.log.every_n_batches, [t.tracker for t in tuned], every,
                                    lrs=[rates[variant.name] for _, variant in chunk])
        submitted.append((chunk, tuned, launcher.submit(job)))
    for chunk, tuned, pending in submitted:
        outcomes = phases.fit_population(launcher, pending, [variant for _, variant in chunk], task.test, record)
        for (i, variant), member, outcome in zip(chunk, tuned, outcomes):
            finish_variant(runs[i], variant, member, outcome, task.test, bases[0], run_dir if i == 0 else None)
        summary.update(runs)


def tune_learning_rates(config: Config, seeds: list[int], bases: list, task: Splits, device: torch.device,
                        record, launcher) -> dict:
    """Each variant at every rate of ``experiment.lrs`` on the tuning seeds, scored on the validation
    split; per variant the rate with the best mean validation accuracy (ties: the smaller rate). A
    rate at which any tuning seed diverged is not chosen. The test set plays no part."""
    grid = sorted(config.experiment.lrs)
    tuning_seeds = config.experiment.tuning_seeds or seeds
    print(f"\n==== choosing learning rates on {len(task.validation):,} validation images: "
          f"{', '.join(f'{lr:g}' for lr in grid)}, seeds {', '.join(map(str, tuning_seeds))}")
    submitted = []  # every population of the tuning, each variant group's at each rate, submitted at once
    for variants in variant_groups(config):
        members = [(variant, lr, seeds.index(seed)) for variant in variants for lr in grid for seed in tuning_seeds]
        for chunk in population_chunks(members, config.experiment.population, device):
            models = [phases.start_variant(bases[i], variant, seeds[i], track=False).model for variant, _, i in chunk]
            job = phases.population_job(models, config.finetune, task.train, [seeds[i] for *_, i in chunk],
                                        config.log.every_n_batches, lrs=[lr for _, lr, _ in chunk])
            submitted.append((chunk, launcher.submit(job)))
    accuracies = {}  # (variant name, rate) -> validation accuracies over the tuning seeds (None: diverged)
    for chunk, pending in submitted:
        names = [f"{variant.name}@lr={lr:g}" for variant, lr, _ in chunk]
        trained = phases.train_members(launcher, pending, names, phases.tagged(record, tuning=True))
        for (variant, lr, _), model, member in zip(chunk, pending.job.models, trained):
            accuracy = None if member.diverged else evaluate(model, task.validation).percent
            accuracies.setdefault((variant.name, lr), []).append(accuracy)
    tuning = {}
    for variant in finetune_variants(config):
        means = {lr: None if None in accuracies[variant.name, lr] else statistics.fmean(accuracies[variant.name, lr])
                 for lr in grid}
        tuning[variant.name] = {"lr": choose_rate(means), "grid": grid,
                                "validation_accuracy": {f"{lr:g}": means[lr] for lr in grid},
                                "seeds": tuning_seeds, "n_validation": len(task.validation)}
    return tuning


def after_pretraining(config: Config, runs: list[SeedResults], bases: list, task: Splits, record,
                      run_dir: Path | None) -> None:
    """Save the first seed's base; on a shifted task, score every base on it before fine-tuning."""
    if run_dir is not None:
        first = runs[0].methods
        first["pretrained"] = dataclasses.replace(first["pretrained"], files=save_pretrained(bases[0], run_dir))
    if config.finetune.task == "same":
        return
    for result, model in zip(runs, bases):  # where fine-tuning starts: the base on the shifted test set
        result.methods["no_finetune"] = phases.score(model, NO_FINETUNE, task.test,
                                                     phases.tagged(record, seed=result.seed),
                                                     lr=None, epochs=0, n_train=0)


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


def pretrain(model, config: Config, seed: int, mnist: Splits, cache: BaseCache | None, record) -> MethodResult:
    """Pretrain ``model`` in place, or load the base an earlier run trained from the same inputs."""
    path = cache.path(seed) if cache is not None else None
    if path is not None and (cached := cache.read(path, model)) is not None:
        return reuse_pretrained(model, cached, path, config, mnist, record)
    kept = phases.Kept(record)  # the records, cached with the weights for the plots of runs that reuse them
    result = phases.fit(model, PRETRAINED, config.pretrain, mnist.train, mnist.test, seed, kept,
                        config.log.every_n_batches)
    if path is not None and not result.diverged:
        cache.save(path, model, kept.records)
    return result


def pretrain_populations(config: Config, seeds: list[int], mnist: Splits, device: torch.device,
                         cache: BaseCache | None, record, launcher) -> tuple[list[torch.nn.Module], list[MethodResult]]:
    """Every seed's base, pretrained as populations or reused from the cache, and its result. A
    population's members are cached under a key naming the whole population, since a member's
    float32 bits depend on which models share its matmuls: one damaged member retrains them all."""
    bases = []
    for seed in seeds:
        torch.manual_seed(seed)
        bases.append(MLP(config.model.hidden_sizes).to(device))
    submitted = []  # per population: its cache paths, and its training or its cached bases
    for chunk in population_chunks(list(range(len(seeds))), config.experiment.population, device):
        chunk_seeds = [seeds[i] for i in chunk]
        paths = [cache.path(seed, chunk_seeds) for seed in chunk_seeds] if cache is not None else []
        cached = [cache.read(path, bases[i]) for i, path in zip(chunk, paths)]
        if paths and None not in cached:
            submitted.append((chunk, paths, cached))
            continue
        job = phases.population_job([bases[i] for i in chunk], config.pretrain, mnist.train, chunk_seeds,
                                    config.log.every_n_batches)
        submitted.append((chunk, paths, launcher.submit(job)))
    results = [None] * len(seeds)
    for chunk, paths, pending in submitted:
        if isinstance(pending, list):
            for i, path, cached in zip(chunk, paths, pending):
                results[i] = reuse_pretrained(bases[i], cached, path, config, mnist,
                                              phases.tagged(record, seed=seeds[i]))
            continue
        kept = phases.Kept(record)  # each member's records, cached with its weights
        outcomes = phases.fit_population(launcher, pending, [PRETRAINED] * len(chunk), mnist.test, kept)
        for i, outcome, path in zip(chunk, outcomes, paths or [None] * len(chunk)):
            results[i] = outcome
            if path is not None and not outcome.diverged:
                cache.save(path, bases[i], [metrics for metrics in kept.records if metrics["seed"] == seeds[i]])
    return bases, results


def reuse_pretrained(model, cached: Cached, path: Path, config: Config, mnist: Splits, record) -> MethodResult:
    """Load the ``cached`` base (read from ``path``) into ``model``, replay its training records, and test it."""
    print(f"\n== pretrained: reusing pretrained base from {path} (same data, model, pretrain settings, seed)")
    records = cached.load_into(model)
    for metrics in records:
        record({**metrics, "cached": True})  # its curve, for the plots; show() leaves them unprinted
    return phases.score(model, PRETRAINED, mnist.test, record, lr=config.pretrain.lr, epochs=config.pretrain.epochs,
                        n_train=len(mnist.train), epoch_records=[r for r in records if r["kind"] == "epoch"],
                        cached=True)


if __name__ == "__main__":
    sys.exit(main())
