"""LoRA vs DoRA on MNIST: pretrain an MLP, fine-tune a LoRA and a DoRA copy of it, compare.

    python dora_example.py                                   # configs/default.yaml
    python dora_example.py --config configs/smoke.yaml       # seconds, on a data subset
    python dora_example.py lora.rank=8 dora.alpha=16         # any key, as key.sub=value

The pipeline: load MNIST onto the device; pretrain the MLP with every weight trainable; then for
each fine-tuning method, deep-copy the pretrained model, freeze it, wrap its linear layers in that
method's adapters, fine-tune only the adapters, and measure accuracy on the whole test set. Results
go to results/<run_name>/ (config.yaml, metrics.jsonl, summary.json), with the pretrained model, each
method's adapters, merged model and PEFT export (see loradora/artifacts.py).
"""

import argparse
import copy
import dataclasses
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from loradora.adapters import add_adapters, count_trainable_parameters, lora_scaling
from loradora.artifacts import format_artifacts, save_method, save_pretrained
from loradora.config import Config, ConfigError, load_config, resolve_device, to_dict, to_yaml
from loradora.data import DataUnavailable, Split, load_mnist
from loradora.model import MLP
from loradora.results import (MetricsLog, OutputUnavailable, create_run_dir, environment, format_table,
                              write_atomic, write_json)
from loradora.training import Diverged, evaluate, train, use_deterministic_algorithms

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 1 no usable data or the pretraining diverged, 2 bad config or output
    folder (nothing written), 130 interrupted (finished phases kept, summary marked incomplete)."""
    args = parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
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
    except DataUnavailable as error:
        summary.update(status="failed", error=str(error))
        save()
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        summary["status"] = "interrupted"
        save()
        print(f"\ninterrupted: finished phases are in {run_dir}/summary.json, marked incomplete",
              file=sys.stderr)
        return 130
    save()
    print("\n" + format_table(summary["methods"]))
    print("\n" + format_artifacts(summary["methods"]))
    print(f"\nresults: {run_dir}/")
    return 0 if summary["status"] == "complete" else 1


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


def new_summary(config: Config, device: torch.device) -> dict:
    """What summary.json holds; ``status`` stays "running" until every phase has finished."""
    return {"status": "running", "methods": {}, "config": to_dict(config), "env": environment(device)}


def run(config: Config, device: torch.device, summary: dict, record=lambda r: None,
        checkpoint=lambda: None, run_dir: Path | None = None) -> dict:
    """The whole experiment, filling ``summary["methods"]`` phase by phase.

    ``record`` receives every metrics record; ``checkpoint`` is called after each phase, so an
    interruption keeps what has finished. A method that diverges is recorded as such and the
    others still run; a pretraining that diverges leaves nothing to fine-tune. With ``run_dir``
    the models and adapters are saved there too (benchmarks leave it out).
    """
    options = dict(root=config.data.root, device=device, download=config.data.download)
    train_data = load_mnist(train=True, subset=config.data.train_subset, **options)
    test_data = load_mnist(train=False, subset=config.data.test_subset, **options)
    print(f"MNIST: {len(train_data):,} training and {len(test_data):,} test images, on {device}")
    results = summary["methods"]

    torch.manual_seed(config.seed)
    model = MLP(config.model.hidden_sizes).to(device)
    results["pretrained"] = fit(model, "pretrained", config.pretrain, train_data, test_data, config, record)
    if results["pretrained"]["diverged"]:
        summary["status"] = "pretraining diverged"
        checkpoint()
        return summary
    if run_dir is not None:
        results["pretrained"].update(save_pretrained(model, run_dir))
    checkpoint()

    for method in config.finetune.methods:
        torch.manual_seed(config.seed)  # every method starts from the same adapter init
        adapter = getattr(config, method)
        tuned = add_adapters(copy.deepcopy(model), method, **dataclasses.asdict(adapter))
        frozen = {name: p.detach().clone() for name, p in tuned.named_parameters() if not p.requires_grad}
        results[method] = fit(tuned, method, config.finetune, train_data, test_data, config, record)
        results[method].update(rank=adapter.rank, alpha=adapter.alpha, scaling=adapter.scaling,
                               s=lora_scaling(adapter.rank, adapter.alpha, adapter.scaling))
        assert_unchanged(tuned, frozen, method)
        if run_dir is not None and not results[method]["diverged"]:
            results[method].update(save_method(tuned, method, run_dir, test_data, base=model))
        checkpoint()

    summary["status"] = "complete"
    return summary


def fit(model, phase: str, settings, train_data: Split, test_data: Split, config: Config, record) -> dict:
    """Train ``model`` on ``train_data`` with ``settings`` (epochs, batch size, lr), then test it."""
    n_trainable = count_trainable_parameters(model)
    n_total = sum(p.numel() for p in model.parameters())
    epochs = f"{settings.epochs} epoch{'' if settings.epochs == 1 else 's'}"
    print(f"\n== {phase}: {epochs}, {n_trainable:,} of {n_total:,} parameters trainable")
    result = {"trainable_params": n_trainable, "epochs": settings.epochs, "n_train": len(train_data),
              "diverged": False}
    generator = torch.Generator().manual_seed(config.seed)  # every phase sees the same batch order
    try:
        epoch_records = train(model, train_data, epochs=settings.epochs, batch_size=settings.batch_size,
                              lr=settings.lr, generator=generator, log_every=config.log.every_n_batches,
                              max_loss=settings.max_loss, log=lambda r: record({"phase": phase, **r}))
    except Diverged as error:
        record({"phase": phase, "kind": "diverged", "message": str(error)})
        return {**result, "diverged": True, "error": str(error), "test_accuracy": None, "n_test": None}
    accuracy = evaluate(model, test_data)
    record({"phase": phase, "kind": "test", "test_accuracy": accuracy.percent, "n_test": accuracy.total})
    return {
        **result,
        "test_accuracy": accuracy.percent,
        "test_correct": accuracy.correct,
        "n_test": accuracy.total,
        "train_accuracy": epoch_records[-1]["train_accuracy"] if epoch_records else None,
        "train_seconds": sum(record["seconds"] for record in epoch_records),
    }


def assert_unchanged(model: torch.nn.Module, frozen: dict, phase: str) -> None:
    """The adapters must leave the pretrained weights bit-identical."""
    changed = [name for name, p in model.named_parameters() if name in frozen and not torch.equal(p, frozen[name])]
    if changed:
        raise RuntimeError(f"{phase} fine-tuning changed frozen weights: {', '.join(changed)}")


def show(record: dict) -> None:
    """Print a metrics record; batch lines keep the seeds' format."""
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
