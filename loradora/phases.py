"""A phase of a run: train its models, one alone or a population at once, then score each on the test set.

A phase is the pretraining or one fine-tuning variant; its metrics records carry its name as
"phase". ``fit`` collects the models a launcher trains (loradora/launcher.py) and scores them;
every result ends in ``method_result``, the one place a ``MethodResult`` is made. The console gets
one line per record of one model, or per population (``show_members``: the members' mean and range).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from loradora.adapters import count_trainable_parameters
from loradora.analysis import DecompositionTracker
from loradora.data import Split
from loradora.experiment import Variant
from loradora.launcher import TrainJob
from loradora.methods import prepare
from loradora.results import MethodResult
from loradora.training import Accuracy, evaluate

Record = Callable[[dict], None]  # receives every metrics record (metrics.jsonl, console, TensorBoard)


def method_result(model: nn.Module, variant: Variant, *, lr: float | None, epochs: int, n_train: int, n_test: int,
                  epoch_records: list[dict] = (), accuracy: Accuracy | None = None, error: str | None = None,
                  cached: bool = False, steps: int | None = None) -> MethodResult:
    """What a phase measured: its test ``accuracy``, or the ``error`` it diverged with."""
    return MethodResult(
        **variant.settings(), lr=lr, epochs=epochs, steps=steps, n_train=n_train, n_test=n_test,
        trainable_params=count_trainable_parameters(model) if epochs else 0,  # untrained: nothing was trained
        diverged=error is not None, error=error,
        test_accuracy=accuracy.percent if accuracy else None, test_correct=accuracy.correct if accuracy else None,
        train_accuracy=epoch_records[-1]["train_accuracy"] if epoch_records else None,
        train_seconds=sum(r["seconds"] for r in epoch_records) if error is None else None,
        cached=cached)


@dataclass(frozen=True)
class Scored:
    """A member's result, and which test images it got right (None where it diverged)."""
    result: MethodResult
    hits: torch.Tensor | None


def score(model: nn.Module, variant: Variant, test_data: Split, record: Record, **training) -> Scored:
    """Accuracy on the whole of ``test_data``, with what training cost (``training``: method_result's)."""
    accuracy = evaluate(model, test_data)
    record({"phase": variant.name, "kind": "test", "test_accuracy": accuracy.percent, "n_test": accuracy.total})
    return Scored(method_result(model, variant, n_test=len(test_data), accuracy=accuracy, **training), accuracy.hits)


@dataclass
class Tuned:
    """A variant's model about to be fine-tuned, with what checks and analyses it afterwards."""
    model: nn.Module
    frozen: dict              # its frozen parameters as they were, to check they stay bit-identical
    tracker: DecompositionTracker | None


def start_variant(base: nn.Module, variant: Variant, seed: int, track: bool) -> Tuned:
    """A copy of ``base`` prepared for ``variant``: the adapters added or the weights it trains
    made trainable, everything else frozen; with ``track``, a tracker of its weight decomposition."""
    torch.manual_seed(seed)  # every method starts from the same adapter init
    model = prepare(base, variant.method, **variant.adapter)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    return Tuned(model, frozen, DecompositionTracker(model) if track else None)


def assert_unchanged(model: nn.Module, frozen: dict, phase: str) -> None:
    """The adapters must leave the pretrained weights bit-identical."""
    changed = [name for name, p in model.named_parameters() if name in frozen and not torch.equal(p, frozen[name])]
    if changed:
        raise RuntimeError(f"{phase} fine-tuning changed frozen weights: {', '.join(changed)}")


def population_job(models: list[nn.Module], settings, train_data: Split, seeds: list[int], log_every: int,
                   precision: str, trackers: list | None = None, track_every: int | None = None,
                   lrs: list[float] | None = None, steps: int | None = None) -> TrainJob:
    """What training ``models`` as one population takes: member i is seed ``seeds[i]``'s model, at
    rate ``lrs[i]`` (default: ``settings.lr``), measured by ``trackers[i]`` if given; its products
    in ``precision`` (the config's); with ``steps`` (finetune.steps), that many batches instead of
    ``settings.epochs`` passes."""
    return TrainJob(models, trackers or [None] * len(models), train_data, seeds, lrs or settings.lr,
                    epochs=settings.epochs, batch_size=settings.batch_size, log_every=log_every,
                    max_loss=settings.max_loss, observe_every=track_every, precision=precision, steps=steps)


def fit(launcher, pending, variants: list[Variant], test_data: Split, record: Record) -> list[Scored]:
    """A phase's models, submitted to ``launcher`` as one population (of one, for a model trained
    alone): member i is ``variants[i]``. Waits for their training, then tests each member on the
    whole of ``test_data`` (with its seed's labels, where a teacher labels each seed's own way); a member that diverged gets its error instead. ``tracker``s, when the
    job has them, measure the weight decomposition after the last step too."""
    job = pending.job
    trained = collect(launcher, pending, [variant.name for variant in variants], record)
    results = []
    for model, variant, seed, lr, tracker, member in zip(job.models, variants, job.seeds, job.lrs, job.trackers,
                                                          trained):
        training = dict(lr=lr, epochs=1 if job.steps else job.epochs, steps=job.steps, n_train=len(job.data))
        if member.diverged:
            results.append(Scored(method_result(model, variant, n_test=len(test_data), error=member.diverged,
                                                **training), None))
            continue
        if tracker is not None:
            tracker(sum(len(r["batch_losses"]) for r in member.epoch_records))
        results.append(score(model, variant, test_data.of_seed(seed), tagged(record, seed=seed, member=True),
                             epoch_records=member.epoch_records, **training))
    show_members(", ".join(dict.fromkeys(variant.name for variant in variants)),
                 [test_record(scored.result) for scored in results if not scored.result.diverged])
    return results


def collect(launcher, pending, phases: list[str], record: Record) -> list:
    """Collect a population submitted to ``launcher`` (``launcher.train``): trained here now, or by
    Ray, whose log records arrive with its result. Each member's records go to ``record``
    marked ``member`` (metrics.jsonl keeps them all); the console gets one line per logged batch with
    the members' mean and range instead, and a line per diverged member."""
    job = pending.job
    label = ", ".join(dict.fromkeys(phases))
    rates = f" at lr {', '.join(f'{lr:g}' for lr in dict.fromkeys(job.lr))}" if isinstance(job.lr, list) else ""
    together = "" if len(job.models) == 1 else (
        f"; {len(job.models)} models at once{rates} (seeds {', '.join(map(str, dict.fromkeys(job.seeds)))})")
    print(f"\n== {label}: {phase_header(job.models[0], job.epochs, job.steps)}{together}")

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


def tagged(record: Record, **tags) -> Record:
    """``record`` with ``tags`` (a seed, say) added to every record it receives."""
    return lambda r: record({**tags, **r})


class Kept:
    """A ``Record`` that passes every record on to ``record`` and keeps a copy in ``records``."""

    def __init__(self, record: Record):
        self.record, self.records = record, []

    def __call__(self, metrics: dict) -> None:
        self.records.append(metrics)
        self.record(metrics)


def test_record(result: MethodResult) -> dict:
    """A finished result as the test record ``show_members`` prints."""
    return {"kind": "test", "test_accuracy": result.test_accuracy, "n_test": result.n_test}


def phase_header(model: nn.Module, epochs: int, steps: int | None = None) -> str:
    n_trainable = count_trainable_parameters(model)
    n_total = sum(p.numel() for p in model.parameters())
    length = f"{steps:,} steps" if steps else f"{epochs} epoch{'' if epochs == 1 else 's'}"
    return f"{length}, {n_trainable:,} of {n_total:,} parameters trainable"


def show(record: dict) -> None:
    """Print a metrics record. Records replayed from the pretrained cache are not printed again,
    nor the members' records of a phase (``collect`` prints them, as one line for all), nor
    the tuning record (its table is printed)."""
    if record.get("cached") or record.get("member") or record["kind"] == "tuning":
        return
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
