"""TensorBoard event files of a run, written from its metrics records (``log.tensorboard: true``).

    results/<run>/tensorboard/<phase>/seed_<seed>/events.out.tfevents.*

One TensorBoard run per phase (pretrained, lora, dora, ...) and seed, all with the same tags, so
that TensorBoard draws LoRA and DoRA on one chart, and ``tensorboard --logdir results`` lays every
run of the results folder side by side:

    loss/batch      every batch's training loss; step = the batch's index over the phase's epochs
    loss/epoch      the epoch's mean training loss; step = the epoch (1, 2, ...)
    accuracy/train  the epoch's training accuracy, in percent; step = the epoch
    accuracy/test   the test accuracy, in percent; step = the epochs trained before the test
    tuning/...      with experiment.lrs: the chosen rate, and the mean validation accuracy at each

The values are those of metrics.jsonl (as float32, TensorBoard's scalar type). The tensorboard
package is optional (requirements-dev.txt): it is imported only when the option is on, and
``require_tensorboard`` says in one line that it is missing, before the run starts.
"""

from pathlib import Path


class TensorBoardUnavailable(RuntimeError):
    """log.tensorboard is on but the tensorboard package cannot be imported."""


def require_tensorboard() -> type:
    """torch's ``SummaryWriter``; it needs the tensorboard package, which the default run does not."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises it when tensorboard is missing or older than 1.15
        raise TensorBoardUnavailable("log.tensorboard: true needs the tensorboard package: pip install tensorboard "
                                     "(or pip install -r requirements-dev.txt), or set log.tensorboard=false") from None
    return SummaryWriter


class TensorBoardLog:
    """A metrics-record sink: call it with every record that a run passes to its cells'
    sinks (``pipeline.Cell``), and ``close()`` it when the run is over.

    A record of kind K is written by the method ``on_K``; kinds without one are skipped: "batch"
    (every N-th batch, which the epoch record's ``batch_losses`` hold with all the others) and
    "diverged" (its loss curve stops there). To chart a new kind of record, add its ``on_<kind>``
    method, as ``on_tuning`` charts the rates tuning chose: it gets the writer of the record's phase
    and seed, the record, and that phase's steps so far.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.summary_writer = require_tensorboard()
        self.writers = {}  # (phase, seed) -> SummaryWriter, opened at the phase's first record
        self.done = {}     # (phase, seed) -> {"batches": written so far, "epochs": the last epoch's number}

    def __call__(self, record: dict) -> None:
        write = getattr(self, f"on_{record['kind']}", None)
        if write is not None:
            key = (record["phase"], record.get("seed"))
            if key not in self.writers:
                self.writers[key] = self.summary_writer(self.directory / key[0] / f"seed_{key[1]}")
                self.done[key] = {"batches": 0, "epochs": 0}
            write(self.writers[key], record, self.done[key])

    def on_epoch(self, writer, record: dict, done: dict) -> None:
        for loss in record["batch_losses"]:
            writer.add_scalar("loss/batch", loss, done["batches"])
            done["batches"] += 1
        writer.add_scalar("loss/epoch", record["loss"], record["epoch"])
        writer.add_scalar("accuracy/train", record["train_accuracy"], record["epoch"])
        done["epochs"] = record["epoch"]
        writer.flush()  # an interrupted run keeps every finished epoch

    def on_test(self, writer, record: dict, done: dict) -> None:
        writer.add_scalar("accuracy/test", record["test_accuracy"], done["epochs"])
        writer.flush()

    def on_tuning(self, writer, record: dict, done: dict) -> None:
        """The learning rate chosen for a phase, and its mean validation accuracy at every rate."""
        writer.add_scalar("tuning/chosen_lr", record["lr"], 0)
        for rate, accuracy in record["validation_accuracy"].items():
            if accuracy is not None:  # None: a tuning seed diverged at that rate
                writer.add_scalar(f"tuning/validation_accuracy/lr_{rate}", accuracy, 0)
        writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()
