"""What a run leaves behind in ``<output.dir>/<run_name>/``, and the table it prints.

config.yaml    the resolved config, every key, as the run used it
metrics.jsonl  one JSON object per logged batch and per epoch, in the order they happened
summary.json   {"methods": {...}, "config": {...}, "env": {...}}, written when the run ends
"""

import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch


def create_run_dir(output_dir: str | Path, run_name: str | None) -> Path:
    """A new, empty folder for this run; an existing one is never reused or overwritten.

    A chosen name that exists is an error; the default name (a timestamp) gets a suffix instead.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if run_name is not None:
        run_dir = output_dir / run_name
        try:
            run_dir.mkdir()
        except FileExistsError:
            raise FileExistsError(f"{run_dir} exists already; choose another output.run_name") from None
        return run_dir
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ["", *(f"-{i}" for i in range(2, 1000))]:
        try:
            (output_dir / (stamp + suffix)).mkdir()
            return output_dir / (stamp + suffix)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free run folder for {stamp} in {output_dir}")


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path`` then rename it, so a crash leaves no half file."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)


def write_atomic_bytes(path: Path, data: bytes) -> None:
    """``write_atomic`` for binary files such as safetensors."""
    with tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


class MetricsLog:
    """Appends one JSON object per line; each line is flushed, so an interrupted run keeps its log."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, record: dict) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")


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


def format_table(methods: dict) -> str:
    """The side-by-side comparison printed at the end of a run."""
    header = ("method", "rank", "alpha", "trainable params", "test accuracy", "train s")
    rows = [header]
    for name, result in methods.items():
        rows.append((
            name,
            str(result.get("rank", "-")),
            f"{result['alpha']:g}" if "alpha" in result else "-",
            f"{result['trainable_params']:,}",
            f"{result['test_accuracy']:.2f}% of {result['n_test']:,}",
            f"{result['train_seconds']:.1f}",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
