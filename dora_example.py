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
whole test set. Finally aggregate the seeds (mean +- std, DoRA - LoRA with a 95% interval) and draw
the plots. Results go to results/<run_name>/ (config.yaml, metrics.jsonl, summary.json, *.png, and
the first seed's models and adapters).
"""

from __future__ import annotations  # the annotations name torch, which is imported later

import argparse
import shutil
import sys
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
    global torch, tqdm, ADAPTERS, count_trainable_parameters, DecompositionTracker, format_artifacts
    global save_method, save_pretrained, cache_path, load_pretrained, save_cached, resolve_device
    global DataUnavailable, Split, load_mnist, aggregate, decomposition_result, finetune_variants, prepare
    global MLP, write_plots, format_report, MetricsLog, OutputUnavailable, create_run_dir, environment
    global write_atomic, write_json, shift_split, task_label, Diverged, evaluate, train
    global use_deterministic_algorithms
    import torch
    from tqdm import tqdm

    from loradora.adapters import ADAPTERS, count_trainable_parameters
    from loradora.analysis import DecompositionTracker
    from loradora.artifacts import format_artifacts, save_method, save_pretrained
    from loradora.cache import cache_path, load_pretrained, save_cached
    from loradora.config import resolve_device
    from loradora.data import DataUnavailable, Split, load_mnist
    from loradora.experiment import aggregate, decomposition_result, finetune_variants
    from loradora.methods import prepare
    from loradora.model import MLP
    from loradora.plots import write_plots
    from loradora.report import format_report
    from loradora.results import (MetricsLog, OutputUnavailable, create_run_dir, environment, write_atomic,
                                  write_json)
    from loradora.tasks import shift_split, task_label
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
    try:
        device = resolve_device(config.device)
        run_dir = create_run_dir(config.output.dir, config.output.run_name)
    except (ConfigError, OutputUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(to_yaml(config))
    if config.deterministic:
        use_deterministic_algorithms()
    write_atomic(run_dir / "config.yaml", to_yaml(config))
    metrics = MetricsLog(run_dir / "metrics.jsonl")
    summary = new_summary(config, device)
    save = lambda: write_json(run_dir / "summary.json", summary)  # noqa: E731
    try:
        run(config, device, summary, record=lambda r: (show(r), metrics(r)), checkpoint=save, run_dir=run_dir)
    except DataUnavailable as error:  # raised while loading MNIST, before anything is trained
        shutil.rmtree(run_dir)  # so an empty run folder is not left behind to be mistaken for a result
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        summary["status"] = "interrupted"
        save()
        print(f"\ninterrupted: finished phases are in {run_dir}/summary.json, marked incomplete",
              file=sys.stderr)
        return 130
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
        checkpoint=lambda: None, run_dir: Path | None = None) -> dict:
    """The whole experiment, once per seed, filling ``summary`` as it goes.

    ``record`` receives every metrics record; ``checkpoint`` is called after each phase, so an
    interruption keeps what has finished. A method that diverges is recorded as such and the others
    still run; a pretraining that diverges leaves nothing to fine-tune. With ``run_dir`` the first
    seed's models and adapters are saved there too (benchmarks leave it out).
    """
    mnist, task = load_data(config, device)
    seeds = config.experiment.seeds or [config.seed]
    runs = []

    def progress():
        summary.update(aggregate(runs))
        checkpoint()

    for i, seed in enumerate(seeds, 1):
        if len(seeds) > 1:
            print(f"\n==== seed {seed} ({i} of {len(seeds)})")
        runs.append({"seed": seed, "methods": {}, "decomposition": {}})
        run_once(config, seed, mnist, task, device, lambda r, seed=seed: record({"seed": seed, **r}),
                 runs[-1], progress, run_dir if i == 1 else None)
        if runs[-1]["methods"]["pretrained"]["diverged"]:
            summary["status"] = "pretraining diverged"
            return summary
    summary["status"] = "complete"
    return summary


def load_data(config: Config, device: torch.device) -> tuple[tuple[Split, Split], tuple[Split, Split]]:
    """(train, test) of MNIST for pretraining, and (train, test) of the fine-tuning task."""
    options = dict(root=config.data.root, device=device, download=config.data.download)
    mnist = (load_mnist(train=True, subset=config.data.train_subset, **options),
             load_mnist(train=False, subset=config.data.test_subset, **options))
    print(f"MNIST: {len(mnist[0]):,} training and {len(mnist[1]):,} test images, on {device}")
    settings = config.finetune
    task = tuple(shift_split(split, settings.task, settings.rotate_degrees, settings.permutation_seed)
                 for split in mnist)
    if settings.task != "same":
        print(f"fine-tuning task: {task_label(settings.task, settings.rotate_degrees, settings.permutation_seed)}"
              f", training and test images alike")
    return mnist, task


def run_once(config: Config, seed: int, mnist: tuple[Split, Split], task: tuple[Split, Split],
             device: torch.device, record, result: dict, progress, run_dir: Path | None) -> None:
    """One seed: pretrain (or reuse) the base, then fine-tune every variant from it, into ``result``."""
    methods, decomposition = result["methods"], result["decomposition"]
    torch.manual_seed(seed)
    model = MLP(config.model.hidden_sizes).to(device)
    methods["pretrained"] = pretrain(model, config, seed, *mnist, device, record)
    if methods["pretrained"]["diverged"]:
        return progress()
    if run_dir is not None:
        methods["pretrained"].update(save_pretrained(model, run_dir))
    if config.finetune.task != "same":  # where fine-tuning starts: the base on the shifted test set
        methods["no_finetune"] = {**score(model, "no_finetune", task[1], [], epochs=0, n_train=0, record=record),
                                  "trainable_params": 0}
    progress()

    for variant in finetune_variants(config):
        torch.manual_seed(seed)  # every method starts from the same adapter init
        tuned = prepare(model, variant.method, **variant.adapter)
        frozen = {name: p.detach().clone() for name, p in tuned.named_parameters() if not p.requires_grad}
        tracker = DecompositionTracker(tuned) if config.analysis.every_n_batches else None
        outcome = methods[variant.name] = {**fit(tuned, variant.name, config.finetune, *task, seed, config,
                                                 record, tracker), **variant.describe()}
        assert_unchanged(tuned, frozen, variant.name)
        if not outcome["diverged"]:
            if tracker is not None:
                decomposition[variant.name] = decomposition_result(tracker)
            if run_dir is not None and variant.method in ADAPTERS:
                outcome.update(save_method(tuned, variant.name, run_dir, task[1], base=model))
        progress()


def pretrain(model, config: Config, seed: int, train_data: Split, test_data: Split, device: torch.device,
             record) -> dict:
    """Pretrain ``model`` in place, or load the base an earlier run trained from the same inputs."""
    path = cache_path(config, seed, device) if config.cache.enabled else None
    cached = load_pretrained(path, model) if path is not None else None
    if cached is None:
        records = []
        result = fit(model, "pretrained", config.pretrain, train_data, test_data, seed, config,
                     lambda r: (records.append(r), record(r)))
        if path is not None and not result["diverged"]:
            save_cached(path, model, [r for r in records if r["kind"] != "test"])
        return result
    print(f"\n== pretrained: reusing pretrained base from {path} (same data, model, pretrain settings, seed)")
    for r in cached:
        record({**r, "cached": True})  # its curve, for the plots; show() leaves them unprinted
    epoch_records = [r for r in cached if r["kind"] == "epoch"]
    result = score(model, "pretrained", test_data, epoch_records, config.pretrain.epochs, len(train_data), record)
    return {**result, "cached": True}


def fit(model, phase: str, settings, train_data: Split, test_data: Split, seed: int, config: Config, record,
        tracker: DecompositionTracker | None = None) -> dict:
    """Train ``model`` on ``train_data`` with ``settings`` (epochs, batch size, lr), then test it.

    ``tracker``, when given, records the weight decomposition every ``analysis.every_n_batches``
    optimiser steps and after the last one.
    """
    n_trainable = count_trainable_parameters(model)
    n_total = sum(p.numel() for p in model.parameters())
    epochs = f"{settings.epochs} epoch{'' if settings.epochs == 1 else 's'}"
    print(f"\n== {phase}: {epochs}, {n_trainable:,} of {n_total:,} parameters trainable")
    generator = torch.Generator().manual_seed(seed)  # every phase sees the same batch order
    try:
        epoch_records = train(model, train_data, epochs=settings.epochs, batch_size=settings.batch_size,
                              lr=settings.lr, generator=generator, log_every=config.log.every_n_batches,
                              max_loss=settings.max_loss, log=lambda r: record({"phase": phase, **r}),
                              checkpoint=tracker, checkpoint_every=config.analysis.every_n_batches)
    except Diverged as error:
        record({"phase": phase, "kind": "diverged", "message": str(error)})
        return {"diverged": True, "error": str(error), "test_accuracy": None, "test_correct": None,
                "n_test": None, "n_train": len(train_data), "trainable_params": n_trainable,
                "train_seconds": None, "epochs": settings.epochs}
    if tracker is not None:
        tracker(sum(len(r["batch_losses"]) for r in epoch_records))
    return score(model, phase, test_data, epoch_records, settings.epochs, len(train_data), record)


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
    pretrained cache are not printed again."""
    if record.get("cached"):
        return
    kind, phase = record["kind"], record["phase"]
    if kind == "batch":
        line = (f"Epoch: {record['epoch']:03d}/{record['epochs']:03d} | "
                f"Batch {record['batch']:03d}/{record['batches']:03d} | Loss: {record['loss']:.4f}")
    elif kind == "epoch":
        line = (f"Epoch: {record['epoch']:03d}/{record['epochs']:03d} | {phase} train loss "
                f"{record['loss']:.4f} | train accuracy {record['train_accuracy']:.2f}% of "
                f"{record['n_train']:,} | {record['seconds']:.2f} s")
    elif kind == "diverged":
        line = f"{phase} diverged and was stopped: {record['message']}; its results are not used"
    else:
        line = f"{phase}: test accuracy {record['test_accuracy']:.2f}% of {record['n_test']:,} images"
    tqdm.write(line)  # through tqdm, so a progress bar on a terminal is not broken up


if __name__ == "__main__":
    sys.exit(main())
