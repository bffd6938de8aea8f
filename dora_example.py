"""LoRA vs DoRA on MNIST: pretrain an MLP, fine-tune a LoRA and a DoRA copy of it, compare.

    python dora_example.py                                   # configs/default.yaml
    python dora_example.py --config configs/smoke.yaml       # seconds, on a data subset
    python dora_example.py lora.rank=8 dora.alpha=16         # any key, as key.sub=value
    python dora_example.py --config configs/seeds.yaml       # 5 seeds: does DoRA beat LoRA?

The pipeline: load MNIST onto the device (and shift it, when finetune.task asks for it); for each
seed, pretrain the MLP with every weight trainable, or reuse the base an earlier run pretrained
from the same inputs; then for each fine-tuning method (lora, dora, and the baselines full and
head), at each rank of a sweep, copy the pretrained model, make trainable what the method trains,
fine-tune it while recording how its weights move (DoRA sec. 2.2), and measure accuracy on the
whole test set. Finally aggregate the seeds (mean +- std, DoRA - LoRA with a 95% interval) and draw
the plots. Results go to results/<run_name>/ (config.yaml, metrics.jsonl, summary.json, *.png).
"""

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from loradora.adapters import count_trainable_parameters
from loradora.analysis import DecompositionTracker
from loradora.cache import cache_path, load_pretrained, save_pretrained
from loradora.config import Config, ConfigError, load_config, resolve_device, to_dict, to_yaml
from loradora.data import DataUnavailable, Split, load_mnist
from loradora.experiment import aggregate, decomposition_result, finetune_variants
from loradora.methods import prepare
from loradora.model import MLP
from loradora.plots import write_plots
from loradora.report import format_report
from loradora.results import MetricsLog, create_run_dir, environment, write_atomic, write_json
from loradora.tasks import shift_split, task_label
from loradora.training import evaluate, train

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        device = resolve_device(config.device)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        run_dir = create_run_dir(config.output.dir, config.output.run_name)
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(to_yaml(config))
    write_atomic(run_dir / "config.yaml", to_yaml(config))
    metrics = MetricsLog(run_dir / "metrics.jsonl")
    try:
        summary = run(config, device, record=lambda r: (show(r), metrics(r)))
    except DataUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    write_json(run_dir / "summary.json", summary)
    print("\n" + format_report(summary))
    for plot in write_plots(run_dir):
        print(f"plot: {plot}")
    print(f"\nresults: {run_dir}/")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Pretrain an MLP on MNIST, fine-tune LoRA and DoRA copies of it, compare them.",
        epilog="Example: python dora_example.py lora.rank=8 dora.alpha=16 output.run_name=r8",
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, type=Path,
                        help="YAML file; keys it leaves out keep their defaults (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="set any config key, e.g. finetune.epochs=3 finetune.methods=[dora]")
    return parser.parse_args(argv)


def run(config: Config, device: torch.device, record=lambda r: None) -> dict:
    """The whole experiment, once per seed; returns the summary. ``record`` receives every metrics record."""
    mnist, task = load_data(config, device)
    seeds = config.experiment.seeds or [config.seed]
    runs = []
    for i, seed in enumerate(seeds, 1):
        if len(seeds) > 1:
            print(f"\n==== seed {seed} ({i} of {len(seeds)})")
        runs.append(run_once(config, seed, mnist, task, device, lambda r, seed=seed: record({"seed": seed, **r})))
    return {**aggregate(runs), "config": to_dict(config), "env": environment(device)}


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
             device: torch.device, record) -> dict:
    """One seed: pretrain (or reuse) the base, then fine-tune every variant from it."""
    torch.manual_seed(seed)
    model = MLP(config.model.hidden_sizes).to(device)
    results = {"pretrained": pretrain(model, config, seed, *mnist, device, record)}
    if config.finetune.task != "same":  # where fine-tuning starts: the base on the shifted test set
        untuned = score(model, "no_finetune", task[1], [], epochs=0, n_train=0, record=record)
        results["no_finetune"] = {**untuned, "trainable_params": 0}

    decomposition = {}
    for variant in finetune_variants(config):
        torch.manual_seed(seed)  # every method starts from the same adapter init
        tuned = prepare(model, variant.method, **variant.adapter)
        frozen = {name: p.detach().clone() for name, p in tuned.named_parameters() if not p.requires_grad}
        tracker = DecompositionTracker(tuned) if config.analysis.every_n_batches else None
        results[variant.name] = fit(tuned, variant.name, config.finetune, *task, seed, config, record, tracker)
        results[variant.name].update(variant.describe())
        assert_unchanged(tuned, frozen, variant.name)
        if tracker is not None:
            decomposition[variant.name] = decomposition_result(tracker)
    return {"seed": seed, "methods": results, "decomposition": decomposition}


def pretrain(model, config: Config, seed: int, train_data: Split, test_data: Split, device: torch.device,
             record) -> dict:
    """Pretrain ``model`` in place, or load the base an earlier run trained from the same inputs."""
    path = cache_path(config, seed, device) if config.cache.enabled else None
    cached = load_pretrained(path, model) if path is not None else None
    if cached is None:
        records = []
        result = fit(model, "pretrained", config.pretrain, train_data, test_data, seed, config,
                     lambda r: (records.append(r), record(r)))
        if path is not None:
            save_pretrained(path, model, [r for r in records if r["kind"] != "test"])
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
    epoch_records = train(model, train_data, epochs=settings.epochs, batch_size=settings.batch_size,
                   lr=settings.lr, generator=generator, log_every=config.log.every_n_batches,
                   log=lambda r: record({"phase": phase, **r}),
                   checkpoint=tracker, checkpoint_every=config.analysis.every_n_batches)
    if tracker is not None:
        tracker(sum(len(r["batch_losses"]) for r in epoch_records))
    return score(model, phase, test_data, epoch_records, settings.epochs, len(train_data), record)


def score(model, phase: str, test_data: Split, epoch_records: list[dict], epochs: int, n_train: int,
         record) -> dict:
    """Accuracy on the whole of ``test_data``, with what training cost."""
    accuracy = evaluate(model, test_data)
    record({"phase": phase, "kind": "test", "test_accuracy": accuracy.percent, "n_test": accuracy.total})
    return {
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
    else:
        line = f"{phase}: test accuracy {record['test_accuracy']:.2f}% of {record['n_test']:,} images"
    tqdm.write(line)  # through tqdm, so a progress bar on a terminal is not broken up


if __name__ == "__main__":
    sys.exit(main())
