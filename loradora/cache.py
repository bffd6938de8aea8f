"""A cache of pretrained bases, so a change to fine-tuning settings does not retrain the base.

The key is a hash of everything that decides the pretrained weights and nothing else: the training
images used (``data.train_subset``), the model, the pretraining settings, the seed, and, because
they change the floating-point result, where it runs: torch version, device (the GPU's name, or
the CPU's name and torch's thread count: 1 and 2 threads sum in different orders, measured). It
also holds a digest of the source files whose code pretrains (SOURCES): an edit to the model, the
training loop or the data pipeline (ReLU to Tanh, say) misses, where it used to load weights
trained by the old code into the new model. A hit therefore gives bit-identical weights to
retraining (a test checks it), so a run's results never depend on whether the cache was warm.
Fine-tuning, adapter, task, test-set and output settings are not in the key.

A cache file is one line holding the SHA-256 of the rest, then the ``torch.save`` of the weights
and records. A file cut short (a full disk, an interrupted copy) or changed is found damaged
before it is loaded: the run says so in one line and retrains that base (``BaseCache``).
"""

import hashlib
import io
import json
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from loradora.config import Config
from loradora.files import Damaged, WriteFailed, read_checked, write_checked
from loradora.run_folder import cpu_name

# Bump when what a cache file holds changes (2: a checksum line before the weights); code changes
# are in the source digest.
CACHE_FORMAT = 2
LABEL = "pretrained base"  # the checksum line's (files.write_checked)

# Every file whose code decides a pretrained base's weights: the model and its seeded init, the
# data, the training loops and the optimiser, the populations and the job that drives them (its
# batch order's seed). Editing any of them, a comment included, retrains the bases once: a few
# seconds each, against a wrong hit that no result would reveal. What only orchestrates or prints
# (loradora/pipeline.py, the entry script) is not here; tests/test_cache.py traces a pretraining
# and fails when a module runs in it that is neither here nor declared not to shape the weights.
PACKAGE = Path(__file__).resolve().parent
SOURCES = tuple(PACKAGE / name for name in ("choices.py", "model.py", "data.py", "training.py", "adam.py",
                                            "population.py", "phases.py", "jobs.py"))


def pretrain_key(config: Config, seed: int, device: torch.device, population: list[int] | None = None) -> str:
    """``population``: the seeds of the population the base was trained in, when it was (their
    number and order change a member's float32 bits, measured); None or one seed: trained alone."""
    inputs = {
        "format": CACHE_FORMAT,
        "train_subset": config.data.train_subset,
        "hidden_sizes": config.model.hidden_sizes,
        "pretrain": {"epochs": config.pretrain.epochs, "batch_size": config.pretrain.batch_size,
                     "lr": config.pretrain.lr},
        "seed": seed,
        "precision": config.precision,
        "numerics": numerics(device),
        "code": source_digest(SOURCES),
    }
    if config.data.validation_size:  # the held-out images are not trained on
        inputs["validation"] = [config.data.validation_size, config.data.validation_seed]
    if population is not None and len(population) > 1:
        inputs["population"] = population
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def source_digest(paths) -> str:
    """SHA-256 over the files' names and contents, in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def numerics(device: torch.device) -> dict:
    """What, besides the inputs, decides the bits of a trained model on ``device``."""
    if device.type == "cuda":
        return {"torch": torch.__version__, "device": torch.cuda.get_device_name(device)}
    return {"torch": torch.__version__, "device": cpu_name(), "threads": torch.get_num_threads()}


def cache_dir(config: Config) -> Path:
    """``cache.dir``, or ``<output.dir>/.pretrained_cache`` when it is null."""
    return Path(config.cache.dir) if config.cache.dir is not None else Path(config.output.dir) / ".pretrained_cache"


def cache_path(config: Config, seed: int, device: torch.device, population: list[int] | None = None) -> Path:
    return cache_dir(config) / f"{pretrain_key(config, seed, device, population)}.pt"


class CacheDamaged(Exception):
    """A cache file that cannot be read, or whose content is not what was written; says why."""


@dataclass
class Cached:
    """A cached base: its weights and the records of the pretraining that made them."""
    state_dict: dict[str, torch.Tensor]
    records: list[dict]

    def load_into(self, model: nn.Module) -> list[dict]:
        model.load_state_dict(self.state_dict)
        return self.records


def save_cached(path: Path, model: nn.Module, records: list[dict]) -> None:
    """The weights and the pretraining's metrics records, after a line holding their SHA-256,
    written atomically (files.WriteFailed when they cannot be). Its test record is left out: a run
    that reuses the base tests it again."""
    buffer = io.BytesIO()
    training = [record for record in records if record["kind"] != "test"]
    torch.save({"state_dict": model.state_dict(), "records": training}, buffer)
    write_checked(path, buffer.getvalue(), LABEL)


def read_cached(path: Path, model: nn.Module) -> Cached:
    """The base cached at ``path``, checked against its checksum and against ``model``'s tensors;
    CacheDamaged when it is truncated, changed, unreadable or of another shape."""
    try:
        payload = read_checked(path, LABEL)
    except Damaged as error:
        raise CacheDamaged(str(error)) from None
    try:
        cached = torch.load(io.BytesIO(payload), map_location=next(model.parameters()).device, weights_only=True)
        cached = Cached(cached["state_dict"], cached["records"])
    except (RuntimeError, EOFError, KeyError, TypeError, pickle.UnpicklingError) as error:
        raise CacheDamaged(f"cannot be loaded: {' '.join(str(error).split())[:200]}") from None
    expected = {name: tensor.shape for name, tensor in model.state_dict().items()}
    if {name: tensor.shape for name, tensor in cached.state_dict.items()} != expected:
        raise CacheDamaged("its tensors do not fit the model")
    return cached


class BaseCache:
    """The cache as one run uses it. A damaged file is a miss, said in one line, and is replaced
    when the base is retrained; a folder that cannot be written is said once, and the run goes on
    without caching. Either way the run's results are those of a cold cache."""

    def __init__(self, config: Config, device: torch.device):
        self.config, self.device, self.writable = config, device, True

    def path(self, seed: int, population: list[int] | None = None) -> Path:
        return cache_path(self.config, seed, self.device, population)

    def read(self, path: Path, model: nn.Module) -> Cached | None:
        """The checked base at ``path`` for ``model``; None on a miss or a damaged file."""
        if not path.exists():
            return None
        try:
            return read_cached(path, model)
        except CacheDamaged as error:
            warn(f"cached base {path} is damaged ({error}); retraining")
            return None

    def save(self, path: Path, model: nn.Module, records: list[dict]) -> None:
        if not self.writable:
            return
        try:
            save_cached(path, model, records)
        except WriteFailed as error:
            self.writable = False
            warn(f"cannot write the pretrained-base cache in {path.parent} ({error.error.strerror or error.error}); "
                 f"going on without caching")


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
