"""Start-up: `python dora_example.py --help` against `python -c "import torch"`, side by side.

    python benchmarks/startup.py [--repeats 7]

Each command runs as a fresh process, the two alternating, so a busy spell of a shared machine
hits both; the best of the repeats is each one's figure (the least disturbed run), and their ratio
is what is reported. The target (issue 11): --help in under half the time of importing torch.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "dora_example.py"
COMMANDS = {
    "dora_example.py --help": [sys.executable, str(SCRIPT), "--help"],
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
}


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    for command in COMMANDS.values():  # once each unmeasured: file caches warm for both alike
        seconds(command)
    times = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            times[name].append(seconds(command))
    for name, values in times.items():
        print(f"{name:<28} best {min(values):.3f} s   all: {' '.join(f'{v:.2f}' for v in values)}")
    help_s, torch_s = (min(values) for values in times.values())
    print(f"--help / import torch = {help_s / torch_s:.2f} (target < 0.5)")


if __name__ == "__main__":
    main()
