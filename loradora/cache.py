"""A cache of pretrained bases, so a change to fine-tuning settings does not retrain the base.

The key is a hash of everything that decides the pretrained weights and nothing else: the training
images used (``data.train_subset``), the model, the pretraining settings, the seed, and, because
they change the floating-point result, where it runs: torch version, device (the GPU's name, or
the CPU's name and torch's thread count: 1 and 2 threads sum in different orders, measured). It
also holds a digest of the source files whose code pretrains (SOURCES): an edit to the model, the
training loop or the data pipeline (ReLU to Tanh, say) misses, where it used to load weights
trained by the old code into the new model. A hit
therefore gives bit-identical weights to retraining (a test checks it), so a run's results never
depend on whether the cache was warm. Fine-tuning, adapter, task, test-set and output settings are
not in the key.
"""

import hashlib
import io
import json
from pathlib import Path

import torch
from torch import nn

from loradora.config import Config
from loradora.files import write_atomic
from loradora.run_folder import cpu_name

CACHE_FORMAT = 1  # bump when what a cache file holds changes; code changes are in the source digest

# Every file whose code runs while a base is pretrained. Editing any of them, a comment included,
# retrains the bases once: a few seconds each, against a wrong hit that no result would reveal.
PACKAGE = Path(__file__).resolve().parent
SOURCES = (PACKAGE / "choices.py", PACKAGE / "model.py", PACKAGE / "data.py", PACKAGE / "training.py",
           PACKAGE / "adam.py",
           PACKAGE / "population.py",  # pretrains several seeds at once
           PACKAGE / "phases.py",  # runs the training loop for a phase
           PACKAGE.parent / "dora_example.py")  # the script seeds and drives the pretraining


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


def save_cached(path: Path, model: nn.Module, records: list[dict]) -> None:
    """The weights and the pretraining's metrics records, written atomically (temporary file, rename).
    Its test record is left out: a run that reuses the base tests it again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    training = [record for record in records if record["kind"] != "test"]
    torch.save({"state_dict": model.state_dict(), "records": training}, buffer)
    write_atomic(path, buffer.getvalue())


def load_pretrained(path: Path, model: nn.Module) -> list[dict] | None:
    """Load the cached weights into ``model`` and return the pretraining's records; None on a miss."""
    if not path.exists():
        return None
    cached = torch.load(path, map_location=next(model.parameters()).device, weights_only=True)
    model.load_state_dict(cached["state_dict"])
    return cached["records"]
