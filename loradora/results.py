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


class OutputUnavailable(RuntimeError):
    """The run folder cannot be created or written."""


def create_run_dir(output_dir: str | Path, run_name: str | None) -> Path:
    """A new, empty folder for this run; an existing one is never reused or overwritten.

    A chosen name that exists is an error; the default name (a timestamp) gets a suffix instead.
    """
    output_dir = Path(output_dir)
    names = [run_name] if run_name else [time.strftime("%Y%m%d-%H%M%S") + suffix
                                         for suffix in ["", *(f"-{i}" for i in range(2, 100))]]
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
    raise OutputUnavailable(f"{output_dir / names[-1]} exists already; choose another output.run_name")


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temporary file beside ``path`` then rename it, so a crash leaves no half file."""
    mode = "wb" if isinstance(data, bytes) else "w"
    with tempfile.NamedTemporaryFile(mode, dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        try:
            tmp.write(data)
            tmp.close()
            os.chmod(tmp.name, 0o644)  # temporary files are private (0600); results are to share
            os.replace(tmp.name, path)
        except BaseException:
            os.unlink(tmp.name)
            raise


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


class MetricsLog:
    """Appends one JSON object per line, each in a single write, so no record is ever half there."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, record: dict) -> None:
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, (json.dumps(record) + "\n").encode())
        finally:
            os.close(descriptor)


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
        diverged = result.get("diverged", False)
        rows.append((
            name,
            str(result.get("rank", "-")),
            f"{result['alpha']:g}" if "alpha" in result else "-",
            f"{result['trainable_params']:,}",
            "diverged" if diverged else f"{result['test_accuracy']:.2f}% of {result['n_test']:,}",
            "-" if diverged else f"{result['train_seconds']:.1f}",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
