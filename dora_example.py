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
chosen on a validation split held out of the training images. Results go to results/<run_name>/ (config.yaml, metrics.jsonl, summary.json, *.png, and
the first seed's models and adapters).
"""

from __future__ import annotations  # the annotations name torch, which is imported later

import argparse
import dataclasses
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from loradora.config import Config, ConfigError, load_config, to_dict, to_yaml

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
    global torch, tqdm, ADAPTERS, count_trainable_parameters, DecompositionTracker, ARTIFACT_FIELDS
    global format_artifacts, save_method, save_pretrained, cache_path, load_pretrained, save_cached
    global resolve_device, DataUnavailable, Split, hold_out, load_mnist, Variant, aggregate, choose_rate
    global decomposition_result, finetune_variants, variant_groups, prepare, MLP, write_plots
    global population_chunks, format_report, format_tuning, MetricsLog
    global OutputUnavailable, create_run_dir, environment, write_atomic, write_json, shift_split, task_label
    global TensorBoardLog, TensorBoardUnavailable, require_tensorboard, Diverged, evaluate, train
    global use_deterministic_algorithms, LauncherUnavailable, LocalLauncher, TrainJob, make_launcher
    import torch
    from tqdm import tqdm

    from loradora.adapters import ADAPTERS, count_trainable_parameters
    from loradora.analysis import DecompositionTracker
    from loradora.artifacts import ARTIFACT_FIELDS, format_artifacts, save_method, save_pretrained
    from loradora.cache import cache_path, load_pretrained, save_cached
    from loradora.config import resolve_device
    from loradora.data import DataUnavailable, Split, hold_out, load_mnist
    from loradora.experiment import (Variant, aggregate, choose_rate, decomposition_result, finetune_variants,
                                     variant_groups)
    from loradora.launcher import LauncherUnavailable, LocalLauncher, TrainJob, make_launcher
    from loradora.methods import prepare
    from loradora.model import MLP
    from loradora.plots import write_plots
    from loradora.population import population_chunks
    from loradora.report import format_report, format_tuning
    from loradora.results import (MetricsLog, OutputUnavailable, create_run_dir, environment, write_atomic,
                                  write_json)
    from loradora.tasks import shift_split, task_label
    from loradora.tensorboard import TensorBoardLog, TensorBoardUnavailable, require_tensorboard
    from loradora.training import Diverged, evaluate, train, use_deterministic_algorithms


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 1 no usable data or the pretraining diverged, 2 bad config or output
    folder (nothing written), 130 interrupted (finished phases kept, summary marked incomplete)."""
    args = parse_args(argv)
    try:
        config = load_config(args.config, args.overrides, project=PROJECT)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import_pipeline()
    launcher = None
    try:
        device = resolve_device(config.device)
        if config.log.tensorboard:
            require_tensorboard()  # a missing package stops the run before its folder is made
        # so do a missing ray package and a cluster that cannot be joined
        launcher = make_launcher(config.experiment.launcher, config.ray.address, device)
        run_dir = create_run_dir(config.output.dir, config.output.run_name)
    except (ConfigError, OutputUnavailable, TensorBoardUnavailable, LauncherUnavailable) as error:
        if launcher is not None:
            launcher.close()
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(to_yaml(config))
    if config.deterministic:
        use_deterministic_algorithms()
    write_atomic(run_dir / "config.yaml", to_yaml(config))
    sinks = [show, MetricsLog(run_dir / "metrics.jsonl")]  # each gets every metrics record
    board = TensorBoardLog(run_dir / "tensorboard") if config.log.tensorboard else None
    if board is not None:
        sinks.append(board)
    summary = new_summary(config, device)
    save = lambda: write_json(run_dir / "summary.json", summary)  # noqa: E731
    try:
        run(config, device, summary, record=lambda r: [sink(r) for sink in sinks], checkpoint=save, run_dir=run_dir,
            launcher=launcher)
    except DataUnavailable as error:  # raised while loading MNIST, before anything is trained
        if board is not None:
            board.close()
        shutil.rmtree(run_dir)  # so an empty run folder is not left behind to be mistaken for a result
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        summary["status"] = "interrupted"
        save()
        print(f"\ninterrupted: finished phases are in {run_dir}/summary.json, marked incomplete",
              file=sys.stderr)
        return 130
    finally:
        if board is not None:
            board.close()
        launcher.close()
    save()
    print("\n" + format_report(summary))
    if artifacts := format_artifacts(summary["runs"][0]["methods"]):  # the files are the first seed's
        print("\n" + artifacts)
    for plot in write_plots(run_dir):
        print(f"plot: {plot}")
    print(f"\nresults: {run_dir}/")
    return 0 if summary["status"] == "complete" else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Pretrain an MLP on MNIST, fine-tune LoRA and DoRA copies of it, compare them.",
        epilog=f"{PATH_RULE} Example: python dora_example.py lora.rank=8 dora.alpha=16 output.run_name=r8",
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, type=Path,
                        help="YAML file; keys it leaves out keep their defaults (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="set any config key, e.g. finetune.epochs=3 finetune.methods=[dora]")
    return parser.parse_args(argv)


def new_summary(config: Config, device: torch.device) -> dict:
    """What summary.json holds; ``status`` stays "running" until every phase has finished."""
    return {"status": "running", "methods": {}, "config": to_dict(config), "env": environment(device)}


def run(config: Config, device: torch.device, summary: dict, record=lambda r: None,
        checkpoint=lambda: None, run_dir: Path | None = None, launcher=None) -> dict:
    """The whole experiment, once per seed, filling ``summary`` as it goes.

    ``record`` receives every metrics record; ``checkpoint`` is called after each phase, so an
    interruption keeps what has finished. A method that diverges is recorded as such and the others
    still run; a pretraining that diverges leaves nothing to fine-tune. With ``run_dir`` the first
    seed's models and adapters are saved there too (benchmarks leave it out). With several seeds
    and ``experiment.population`` other than 1, each phase trains its seeds (and a sweep's ranks)
    as populations instead of one seed after another (``run_populations``), each trained where
    ``launcher`` puts it (loradora/launcher.py; default: here, one after another).
    """
    mnist, task = load_data(config, device)
    seeds = config.experiment.seeds or [config.seed]
    runs = [{"seed": seed, "methods": {}, "decomposition": {}} for seed in seeds]

    def progress():
        done = [run for run in runs if run["methods"]]
        summary.update(aggregate(done, config.experiment.margin))
        checkpoint()

    if config.experiment.lrs or (len(seeds) > 1 and config.experiment.population != 1):
        summary["status"] = run_populations(config, runs, summary, mnist, task, device, record, progress, run_dir,
                                            launcher or LocalLauncher())
        return summary
    for i, (seed, result) in enumerate(zip(seeds, runs), 1):
        if len(seeds) > 1:
            print(f"\n==== seed {seed} ({i} of {len(seeds)})")
        run_once(config, seed, mnist, task, device, lambda r, seed=seed: record({"seed": seed, **r}),
                 result, progress, run_dir if i == 1 else None)
        if result["methods"]["pretrained"]["diverged"]:
            summary["status"] = "pretraining diverged"
            return summary
    summary["status"] = "complete"
    return summary


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


def run_once(config: Config, seed: int, mnist: Splits, task: Splits, device: torch.device, record, result: dict,
             progress, run_dir: Path | None) -> None:
    """One seed: pretrain (or reuse) the base, then fine-tune every variant from it, into ``result``."""
    methods = result["methods"]
    torch.manual_seed(seed)
    model = MLP(config.model.hidden_sizes).to(device)
    methods["pretrained"] = pretrain(model, config, seed, mnist.train, mnist.test, device, record)
    if methods["pretrained"]["diverged"]:
        return progress()
    after_pretraining(config, [result], [model], task, record, run_dir)
    progress()

    for variant in finetune_variants(config):
        tuned = start_variant(model, variant, seed, config)
        outcome = fit(tuned.model, variant.name, config.finetune, task.train, task.test, seed, config, record,
                      tuned.tracker)
        finish_variant(result, variant, tuned, outcome, task.test, model, run_dir)
        progress()


def run_populations(config: Config, runs: list[dict], summary: dict, mnist: Splits, task: Splits,
                    device: torch.device, record, progress, run_dir: Path | None, launcher) -> str:
    """``run`` phase by phase: every seed's pretraining, then each fine-tuning method at each rank
    bucket for every seed, each as populations of ``experiment.population`` models trained at once.
    Fills ``runs`` as ``run_once`` does for each seed; returns the run's status.

    With ``experiment.lrs``, each variant first trains at every rate of the grid on the tuning seeds
    and is scored on the validation split; the rate with the best mean validation accuracy is its
    rate for every seed (summary["tuning"]). The test set is scored only after that choice, at the
    chosen rates, and at the shared ``finetune.lr`` as "<variant>@shared" for comparison.

    Each phase (the pretraining, the tuning, a method at a rank bucket) submits all its populations
    to ``launcher`` before it collects the first, then collects and reports them in order.
    """
    seeds = [result["seed"] for result in runs]
    bases = pretrain_populations(config, runs, mnist, device, record, launcher)
    if any(result["methods"]["pretrained"]["diverged"] for result in runs):
        progress()
        return "pretraining diverged"
    after_pretraining(config, runs, bases, task, lambda r: record({"member": True, **r}), run_dir)
    show_members("no_finetune", [result["methods"]["no_finetune"] | {"kind": "test"} for result in runs
                                 if "no_finetune" in result["methods"]])
    progress()

    shared = {variant.name: config.finetune.lr for variant in finetune_variants(config)}
    rates = shared
    if config.experiment.lrs:
        summary["tuning"] = tune_learning_rates(config, seeds, bases, task, device, record, launcher)
        print("\n" + format_tuning(summary["tuning"]))
        for name, tuning in summary["tuning"].items():  # for metrics.jsonl and TensorBoard; printed above
            record({"kind": "tuning", "phase": name, "lr": tuning["lr"],
                    "validation_accuracy": tuning["validation_accuracy"]})
        rates = {name: tuning["lr"] for name, tuning in summary["tuning"].items()}
    # with tuning, also every variant at the shared rate, as configured (unless turned off, or the
    # grid chose that rate for every variant)
    shared_too = (config.experiment.lrs and config.experiment.shared_lr
                  and set(rates.values()) != {config.finetune.lr})
    for variants in variant_groups(config):  # a method, at the ranks of one bucket
        finetune_populations(config, runs, bases, task, variants, rates, device, record, progress, run_dir, launcher)
        if shared_too:
            again = [dataclasses.replace(variant, name=f"{variant.name}@shared") for variant in variants
                     if rates[variant.name] != config.finetune.lr]
            finetune_populations(config, runs, bases, task, again, {v.name: config.finetune.lr for v in again},
                                 device, record, progress, None, launcher)
            for variant in variants:
                if rates[variant.name] == config.finetune.lr:  # chosen: its runs are the shared-rate runs
                    for result in runs:
                        result["methods"][f"{variant.name}@shared"] = {
                            key: value for key, value in result["methods"][variant.name].items()
                            if key not in ARTIFACT_FIELDS}
    # the table order of a one-seed-at-a-time run, each variant's shared-rate runs beside it
    order = [name for variant in finetune_variants(config) for name in (variant.name, f"{variant.name}@shared")]
    for result in runs:
        result["methods"] = dict(sorted(result["methods"].items(),
                                        key=lambda item: order.index(item[0]) if item[0] in order else -1))
    progress()
    return "complete"


def finetune_populations(config: Config, runs: list[dict], bases: list, task: Splits, variants: list[Variant],
                         rates: dict[str, float], device: torch.device, record, progress,
                         run_dir: Path | None, launcher) -> None:
    """Fine-tune ``variants`` for every seed, each at its rate, as populations; results into ``runs``."""
    seeds = [result["seed"] for result in runs]
    members = [(i, variant) for variant in variants for i in range(len(runs))]
    submitted = []
    for chunk in population_chunks(members, config.experiment.population, device):
        tuned = [start_variant(bases[i], variant, seeds[i], config) for i, variant in chunk]
        job = population_job([t.model for t in tuned], config.finetune, task.train, [seeds[i] for i, _ in chunk],
                             config, [t.tracker for t in tuned], lrs=[rates[variant.name] for _, variant in chunk])
        submitted.append((chunk, tuned, launcher.submit(job)))
    for chunk, tuned, pending in submitted:
        outcomes = fit_population(launcher, pending, [variant.name for _, variant in chunk], config.finetune,
                                  task.test, config, record)
        for (i, variant), member, outcome in zip(chunk, tuned, outcomes):
            outcome["lr"] = rates[variant.name]
            finish_variant(runs[i], variant, member, outcome, task.test, bases[0], run_dir if i == 0 else None)
        progress()


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
            models = [start_variant(bases[i], variant, seeds[i], config, track=False).model for variant, _, i in chunk]
            job = population_job(models, config.finetune, task.train, [seeds[i] for *_, i in chunk], config,
                                 lrs=[lr for _, lr, _ in chunk])
            submitted.append((chunk, launcher.submit(job)))
    accuracies = {}  # (variant name, rate) -> validation accuracies over the tuning seeds (None: diverged)
    for chunk, pending in submitted:
        phases = [f"{variant.name}@lr={lr:g}" for variant, lr, _ in chunk]
        trained = train_members(launcher, pending, phases, config.finetune, lambda r: record({"tuning": True, **r}))
        for (variant, lr, _), model, member in zip(chunk, pending.job.models, trained):
            score_ = None if member.diverged else evaluate(model, task.validation).percent
            accuracies.setdefault((variant.name, lr), []).append(score_)
    tuning = {}
    for variant in finetune_variants(config):
        means = {lr: None if None in accuracies[variant.name, lr] else statistics.fmean(accuracies[variant.name, lr])
                 for lr in grid}
        tuning[variant.name] = {"lr": choose_rate(means), "grid": grid,
                                "validation_accuracy": {f"{lr:g}": means[lr] for lr in grid},
                                "seeds": tuning_seeds, "n_validation": len(task.validation)}
    return tuning


def after_pretraining(config: Config, runs: list[dict], bases: list, task: Splits, record,
                      run_dir: Path | None) -> None:
    """Save the first seed's base; on a shifted task, score every base on it before fine-tuning."""
    if run_dir is not None:
        runs[0]["methods"]["pretrained"].update(save_pretrained(bases[0], run_dir))
    if config.finetune.task == "same":
        return
    for result, model in zip(runs, bases):  # where fine-tuning starts: the base on the shifted test set
        seed_record = lambda r, seed=result["seed"]: record({"seed": seed, **r})  # noqa: E731
        result["methods"]["no_finetune"] = {**score(model, "no_finetune", task.test, [], epochs=0, n_train=0,
                                                    record=seed_record), "trainable_params": 0}


@dataclass
class Tuned:
    """A variant's model about to be fine-tuned, with what checks and analyses it afterwards."""
    model: torch.nn.Module
    frozen: dict              # its frozen parameters as they were, to check they stay bit-identical
    tracker: DecompositionTracker | None


def start_variant(base: torch.nn.Module, variant: Variant, seed: int, config: Config, track: bool = True) -> Tuned:
    torch.manual_seed(seed)  # every method starts from the same adapter init
    model = prepare(base, variant.method, **variant.adapter)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    tracker = DecompositionTracker(model) if track and config.analysis.every_n_batches else None
    return Tuned(model, frozen, tracker)


def finish_variant(result: dict, variant: Variant, tuned: Tuned, outcome: dict, test_data: Split,
                   base: torch.nn.Module, run_dir: Path | None) -> None:
    """Check and record a fine-tuned variant into its seed's ``result``; with ``run_dir``, save it."""
    outcome = result["methods"][variant.name] = {**outcome, **variant.describe()}
    assert_unchanged(tuned.model, tuned.frozen, variant.name)
    if outcome["diverged"]:
        return
    if tuned.tracker is not None:
        result["decomposition"][variant.name] = decomposition_result(tuned.tracker)
    if run_dir is not None and variant.method in ADAPTERS:
        outcome.update(save_method(tuned.model, variant.name, run_dir, test_data, base=base))


def pretrain(model, config: Config, seed: int, train_data: Split, test_data: Split, device: torch.device,
             record) -> dict:
    """Pretrain ``model`` in place, or load the base an earlier run trained from the same inputs."""
    path = cache_path(config, seed, device) if config.cache.enabled else None
    if path is not None and path.exists():
        return reuse_pretrained(model, path, config, len(train_data), test_data, record)
    records = []
    result = fit(model, "pretrained", config.pretrain, train_data, test_data, seed, config,
                 lambda r: (records.append(r), record(r)))
    if path is not None and not result["diverged"]:
        save_cached(path, model, [r for r in records if r["kind"] != "test"])
    return result


def pretrain_populations(config: Config, runs: list[dict], mnist: Splits, device: torch.device,
                         record, launcher) -> list[torch.nn.Module]:
    """Every seed's base, pretrained as populations or reused from the cache; the results go into
    ``runs``. A population's members are cached under a key naming the whole population, since a
    member's float32 bits depend on which models share its matmuls."""
    seeds = [result["seed"] for result in runs]
    bases = []
    for seed in seeds:
        torch.manual_seed(seed)
        bases.append(MLP(config.model.hidden_sizes).to(device))
    submitted = []  # per population: its cache paths, and its training unless every member is cached
    for chunk in population_chunks(list(range(len(seeds))), config.experiment.population, device):
        chunk_seeds = [seeds[i] for i in chunk]
        paths = [cache_path(config, seed, device, chunk_seeds) for seed in chunk_seeds] if config.cache.enabled else []
        if paths and all(path.exists() for path in paths):
            submitted.append((chunk, paths, None))
            continue
        job = population_job([bases[i] for i in chunk], config.pretrain, mnist.train, chunk_seeds, config)
        submitted.append((chunk, paths, launcher.submit(job)))
    for chunk, paths, pending in submitted:
        if pending is None:
            for i, path in zip(chunk, paths):
                seed_record = lambda r, seed=seeds[i]: record({"seed": seed, **r})  # noqa: E731
                runs[i]["methods"]["pretrained"] = reuse_pretrained(bases[i], path, config, len(mnist.train),
                                                                    mnist.test, seed_record)
            continue
        records = {seeds[i]: [] for i in chunk}
        results = fit_population(launcher, pending, ["pretrained"] * len(chunk), config.pretrain, mnist.test, config,
                                 lambda r: (records[r["seed"]].append(r), record(r)))
        for i, result, path in zip(chunk, results, paths or [None] * len(chunk)):
            runs[i]["methods"]["pretrained"] = result
            if path is not None and not result["diverged"]:
                save_cached(path, bases[i], [r for r in records[seeds[i]] if r["kind"] != "test"])
    return bases


def reuse_pretrained(model, path: Path, config: Config, n_train: int, test_data: Split, record) -> dict:
    """Load the cached base at ``path`` into ``model``, replay its training records, and test it."""
    print(f"\n== pretrained: reusing pretrained base from {path} (same data, model, pretrain settings, seed)")
    cached = load_pretrained(path, model)
    for r in cached:
        record({**r, "cached": True})  # its curve, for the plots; show() leaves them unprinted
    epoch_records = [r for r in cached if r["kind"] == "epoch"]
    result = score(model, "pretrained", test_data, epoch_records, config.pretrain.epochs, n_train, record)
    return {**result, "cached": True}


def fit(model, phase: str, settings, train_data: Split, test_data: Split, seed: int, config: Config, record,
        tracker: DecompositionTracker | None = None) -> dict:
    """Train ``model`` on ``train_data`` with ``settings`` (epochs, batch size, lr), then test it.

    ``tracker``, when given, records the weight decomposition every ``analysis.every_n_batches``
    optimiser steps and after the last one.
    """
    print(f"\n== {phase}: {phase_header(model, settings)}")
    generator = torch.Generator().manual_seed(seed)  # every phase sees the same batch order
    try:
        epoch_records = train(model, train_data, epochs=settings.epochs, batch_size=settings.batch_size,
                              lr=settings.lr, generator=generator, log_every=config.log.every_n_batches,
                              max_loss=settings.max_loss, log=lambda r: record({"phase": phase, **r}),
                              checkpoint=tracker, checkpoint_every=config.analysis.every_n_batches)
    except Diverged as error:
        record({"phase": phase, "kind": "diverged", "message": str(error)})
        return diverged_result(str(error), model, settings, len(train_data))
    if tracker is not None:
        tracker(sum(len(r["batch_losses"]) for r in epoch_records))
    return score(model, phase, test_data, epoch_records, settings.epochs, len(train_data), record)


def population_job(models: list, settings, train_data: Split, seeds: list[int], config: Config,
                   trackers: list | None = None, lrs: list[float] | None = None) -> TrainJob:
    """What training ``models`` as one population takes: member i is seed ``seeds[i]``'s model, at
    rate ``lrs[i]`` (default: ``settings.lr``), watched by ``trackers[i]`` if given."""
    return TrainJob(models, trackers or [None] * len(models), train_data, seeds, lrs or settings.lr,
                    epochs=settings.epochs, batch_size=settings.batch_size, log_every=config.log.every_n_batches,
                    max_loss=settings.max_loss, checkpoint_every=config.analysis.every_n_batches)


def fit_population(launcher, pending, phases: list[str], settings, test_data: Split, config: Config,
                   record) -> list[dict]:
    """``fit`` for a population submitted to ``launcher``: member i is phase ``phases[i]``. Waits for
    its training, then tests each member, as ``fit`` does."""
    job = pending.job
    trained = train_members(launcher, pending, phases, settings, record)
    results = []
    for model, phase, seed, tracker, member in zip(job.models, phases, job.seeds, job.trackers, trained):
        member_record = lambda r, seed=seed, phase=phase: record({"seed": seed, "phase": phase, "member": True, **r})  # noqa: E731
        if member.diverged:
            results.append(diverged_result(member.diverged, model, settings, len(job.data)))
            continue
        if tracker is not None:
            tracker(sum(len(r["batch_losses"]) for r in member.epoch_records))
        results.append(score(model, phase, test_data, member.epoch_records, settings.epochs, len(job.data),
                             member_record))
    show_members(", ".join(dict.fromkeys(phases)), [{"kind": "test", **r} for r in results if not r["diverged"]])
    return results


def train_members(launcher, pending, phases: list[str], settings, record) -> list:
    """Collect a population submitted to ``launcher`` (``population.train_population``): trained here
    now, or by Ray, whose log records arrive with its result. Each member's records go to ``record``
    marked ``member`` (metrics.jsonl keeps them all); the console gets one line per logged batch with
    the members' mean and range instead, and a line per diverged member."""
    job = pending.job
    label = ", ".join(dict.fromkeys(phases))
    rates = f" at lr {', '.join(f'{lr:g}' for lr in dict.fromkeys(job.lr))}" if isinstance(job.lr, list) else ""
    print(f"\n== {label}: {phase_header(job.models[0], settings)}; {len(job.models)} models at once{rates} "
          f"(seeds {', '.join(map(str, dict.fromkeys(job.seeds)))})")

    def log(records: dict[int, dict]) -> None:
        for i, r in records.items():
            record({"seed": job.seeds[i], "phase": phases[i], "member": True, **r})
        show_members(label, list(records.values()))

    trained = launcher.collect(pending, log)
    for phase, seed, member in zip(phases, job.seeds, trained):
        if member.diverged:
            tqdm.write(f"{phase} (seed {seed}) diverged and was stopped: {member.diverged}; its results are not used")
            record({"seed": seed, "phase": phase, "member": True, "kind": "diverged", "message": member.diverged})
    return trained


def phase_header(model, settings) -> str:
    n_trainable = count_trainable_parameters(model)
    n_total = sum(p.numel() for p in model.parameters())
    epochs = f"{settings.epochs} epoch{'' if settings.epochs == 1 else 's'}"
    return f"{epochs}, {n_trainable:,} of {n_total:,} parameters trainable"


def diverged_result(error: str, model, settings, n_train: int) -> dict:
    return {"diverged": True, "error": error, "test_accuracy": None, "test_correct": None, "n_test": None,
            "n_train": n_train, "trainable_params": count_trainable_parameters(model), "train_seconds": None,
            "epochs": settings.epochs}


def score(model, phase: str, test_data: Split, epoch_records: list[dict], epochs: int, n_train: int,
          record) -> dict:
    """Accuracy on the whole of ``test_data``, with what training cost."""
    accuracy = evaluate(model, test_data)
    record({"phase": phase, "kind": "test", "test_accuracy": accuracy.percent, "n_test": accuracy.total})
    return {
        "diverged": False,
        "test_accuracy": accuracy.percent,
        "test_correct": accuracy.correct,
        "n_test": accuracy.total,
        "train_accuracy": epoch_records[-1]["train_accuracy"] if epoch_records else None,
        "n_train": n_train,
        "trainable_params": count_trainable_parameters(model),
        "train_seconds": sum(record["seconds"] for record in epoch_records),
        "epochs": epochs,
    }


def assert_unchanged(model: torch.nn.Module, frozen: dict, phase: str) -> None:
    """The adapters must leave the pretrained weights bit-identical."""
    changed = [name for name, p in model.named_parameters() if name in frozen and not torch.equal(p, frozen[name])]
    if changed:
        raise RuntimeError(f"{phase} fine-tuning changed frozen weights: {', '.join(changed)}")


def show(record: dict) -> None:
    """Print a metrics record; batch lines keep the seeds' format. Records replayed from the
    pretrained cache are not printed again, nor a population's per-member records (show_members
    prints those), nor the tuning record (its table is printed)."""
    if record.get("cached") or record.get("member") or record["kind"] == "tuning":
        return
    if record["kind"] == "diverged":
        tqdm.write(f"{record['phase']} diverged and was stopped: {record['message']}; its results are not used")
    else:
        show_members(record["phase"], [record])


def show_members(label: str, records: list[dict]) -> None:
    """One line for the same record of one model, or of every member of a population: then each
    number is the members' mean with their [min, max]."""
    if not records:
        return
    first, many = records[0], len(records) > 1

    def stat(key: str, fmt: str) -> str:
        values = [r[key] for r in records]
        return (f"{sum(values) / len(values):{fmt}} [{min(values):{fmt}}, {max(values):{fmt}}]"
                if many else f"{values[0]:{fmt}}")

    of = f" (mean [min, max] of {len(records)} models)" if many else ""
    epoch = f"Epoch: {first['epoch']:03d}/{first['epochs']:03d}" if "epoch" in first else ""
    if first["kind"] == "batch":
        line = f"{epoch} | Batch {first['batch']:03d}/{first['batches']:03d} | Loss: {stat('loss', '.4f')}{of}"
    elif first["kind"] == "epoch":
        line = (f"{epoch} | {label} train loss {stat('loss', '.4f')} | train accuracy "
                f"{stat('train_accuracy', '.2f')}% of {first['n_train']:,} | {first['seconds']:.2f} s"
                f"{f' per model{of}' if many else ''}")
    else:
        line = (f"{label}: test accuracy {stat('test_accuracy', '.2f')}%{of} of {first['n_test']:,} images"
                if not many else f"{label}: test accuracy {stat('test_accuracy', '.2f')}%{of}, each of "
                                 f"{first['n_test']:,} images")
    tqdm.write(line)  # through tqdm, so a progress bar on a terminal is not broken up


if __name__ == "__main__":
    sys.exit(main())
