"""The run folder, ``<output.dir>/<run_name>/``, and the records that go into it as the run goes.

config.yaml    the resolved config, every key, as the run used it
metrics.jsonl  one JSON object per logged batch and per epoch, in the order they happened
summary.json   {"status", "methods", "runs", ..., "config", "env"}, rewritten after every phase (results.py)
"""

import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from loradora.files import append_line


class OutputUnavailable(RuntimeError):
    """The run folder cannot be created or written."""


LABEL_LIMIT = 60  # characters of a default name's label: the folder's name stays readable in a listing


def run_label(config_name: str, overrides: list[str]) -> str:
    """What ran, for a default run name: the config file's name and the keys overridden on the
    command line (output.* left out: it only says where results go), e.g.
    "smoke_lora.rank=8_experiment.seeds=1,2,3"; '/', '\\', spaces, quotes and brackets dropped, cut
    to LABEL_LIMIT characters."""
    kept = [override for override in overrides if not override.strip().startswith("output.")]
    label = "_".join([config_name, *kept])
    return "".join(c for c in label if c not in "/\\ '\"[](){}")[:LABEL_LIMIT]


def create_run_dir(output_dir: str | Path, run_name: str | None, label: str = "") -> Path:
    """A new, empty folder for this run; an existing one is never reused or overwritten.

    A chosen name that exists is an error; the default name (a timestamp, then ``label``: what
    ran, ``run_label``) gets a suffix instead.
    """
    output_dir = Path(output_dir)
    stem = time.strftime("%Y%m%d-%H%M%S") + (f"_{label}" if label else "")
    names = [run_name] if run_name else [stem + suffix for suffix in ["", *(f"-{i}" for i in range(2, 100))]]
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            try:
                (output_dir / name).mkdir()
                return output_dir / name
            except FileExistsError:
                continue
    except OSError as error:
        raise OutputUnavailable(f"cannot create a run folder in {output_dir}: {error.strerror}") from None
    raise OutputUnavailable(f"{output_dir / names[-1]} exists already; choose another output.run_name, or continue "
                            f"that run: python dora_example.py --resume {output_dir / names[-1]}")


class MetricsLog:
    """Appends one JSON object per line, each in a single write, so no record is ever half there."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, record: dict) -> None:
        append_line(self.path, json.dumps(record))


def environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": name,
        "cpu_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
    }


def cpu_name() -> str:
    """The CPU's model name where Linux tells it (platform.processor() is empty there)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """The checkout's commit, with '-dirty' when it has uncommitted changes; None outside git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")
