"""A phase's models: how each starts (``start_variant``), how it is scored (``score``), and what the
console says of it.

A phase is the pretraining or one fine-tuning variant; its metrics records carry its name as
"phase". Every result ends in ``method_result``, the one place a ``MethodResult`` is made. The
console gets one line per record of one model, or per population (``member_line``: the members'
mean and range).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from loradora.adapters import count_trainable_parameters
from loradora.analysis import DecompositionTracker
from loradora.data import Split
from loradora.variants import Variant
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
    # n_test is what was scored, not the split's length: a test of "all 10,000 images" then checks evaluate itself
    return Scored(method_result(model, variant, n_test=accuracy.total, accuracy=accuracy, **training), accuracy.hits)


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


def tagged(record: Record, **tags) -> Record:
    """``record`` with ``tags`` (a seed, say) added to every record it receives."""
    return lambda r: record({**tags, **r})


def test_record(result: MethodResult) -> dict:
    """A finished result as the test record ``member_line`` prints."""
    return {"kind": "test", "test_accuracy": result.test_accuracy, "n_test": result.n_test}


def phase_header(model: nn.Module, epochs: int, steps: int | None = None) -> str:
    n_trainable = count_trainable_parameters(model)
    n_total = sum(p.numel() for p in model.parameters())
    length = f"{steps:,} steps" if steps else f"{epochs} epoch{'' if epochs == 1 else 's'}"
    return f"{length}, {n_trainable:,} of {n_total:,} parameters trainable"


def show(record: dict) -> None:
    """Print a metrics record. Records replayed from the pretrained cache or a kept job are not
    printed again, nor the members' records of a phase (a job prints them, as one line for all),
    nor the tuning record (its table is printed)."""
    if record.get("cached") or record.get("member") or record["kind"] == "tuning":
        return
    tqdm.write(member_line(record["phase"], [record]))  # through tqdm: a progress bar is not broken up


def member_line(label: str, records: list[dict]) -> str | None:
    """One line for the same record of one model, or of every member of a population: then each
    number is the members' mean with their [min, max]. None for no records."""
    if not records:
        return None
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
    return line
