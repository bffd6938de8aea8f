"""Start-up and the default run's overhead, each measured side by side in fresh processes.

    python benchmarks/startup.py [--repeats 7]               # --help against `python -c "import torch"`
    python benchmarks/startup.py run [--repeats 3] [--against REF]

The first: `python dora_example.py --help` against importing torch; target (issue 11): under half.
The second: `python dora_example.py cache.enabled=false` (the default run, always pretraining), its
wall time against the training seconds its summary.json reports; target (issue 11): at most 1.6x.
With --against, the same run from git revision REF (checked out into a temporary worktree, reading
the same data/) alternates with this checkout's, so a busy spell of a shared machine hits both.

Commands alternate, and the best of the repeats is each one's figure (the least disturbed run).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
SCRIPT = PROJECT / "dora_example.py"


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def startup(repeats: int) -> None:
    commands = {"dora_example.py --help": [sys.executable, str(SCRIPT), "--help"],
                'python -c "import torch"': [sys.executable, "-c", "import torch"]}
    for command in commands.values():  # once each unmeasured: file caches warm for both alike
        seconds(command)
    times = {name: [] for name in commands}
    for _ in range(repeats):
        for name, command in commands.items():
            times[name].append(seconds(command))
    for name, values in times.items():
        print(f"{name:<28} best {min(values):.3f} s   all: {' '.join(f'{v:.2f}' for v in values)}")
    help_s, torch_s = (min(values) for values in times.values())
    print(f"--help / import torch = {help_s / torch_s:.2f} (target < 0.5)")


def default_run(script: Path, output: Path, name: str) -> tuple[float, float]:
    """Wall seconds of one default run of ``script``, and the training seconds it reports."""
    command = [sys.executable, str(script), "cache.enabled=false", f"data.root={PROJECT / 'data'}",
               f"output.dir={output}", f"output.run_name={name}"]
    wall = seconds(command)
    methods = json.loads((output / name / "summary.json").read_text())["methods"]
    return wall, sum(result["train_seconds"] for result in methods.values())


def overhead(repeats: int, against: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        scripts = {"this checkout": SCRIPT}
        if against:
            worktree = Path(tmp) / "against"
            subprocess.run(["git", "-C", str(PROJECT), "worktree", "add", "--detach", str(worktree), against],
                           check=True, capture_output=True)
            scripts[against] = worktree / "dora_example.py"
        try:
            runs = {side: [] for side in scripts}
            for repeat in range(repeats):
                for side, script in scripts.items():
                    wall, train = default_run(script, Path(tmp) / "results", f"{len(runs[side])}-{repeat}-{id(side)}")
                    runs[side].append((wall, train))
                    print(f"{side:<14} wall {wall:5.2f} s, training {train:5.2f} s, ratio {wall / train:.2f}",
                          flush=True)
            for side, values in runs.items():
                wall, train = min(values)
                print(f"{side}: best wall {wall:.2f} s with {train:.2f} s of training: ratio {wall / train:.2f} "
                      f"(target <= 1.6); non-training {wall - train:.2f} s")
        finally:
            if against:
                subprocess.run(["git", "-C", str(PROJECT), "worktree", "remove", "--force", str(worktree)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=["help", "run"], default="help")
    parser.add_argument("--repeats", type=int, default=None, help="default: 7 for help, 3 for run")
    parser.add_argument("--against", metavar="REF", help="with run: alternate with the code at this git revision")
    args = parser.parse_args()
    if args.what == "help":
        startup(args.repeats or 7)
    else:
        overhead(args.repeats or 3, args.against)


if __name__ == "__main__":
    main()
