"""Whole default pipeline: this project's against the same pipeline written the seeds' way.

    python benchmarks/pipeline_vs_seeds.py [--repeats 1] [key.sub=value ...]

Both run in this one process, on the same machine, alternately, so the ratio is measured side by
side. Each is timed end to end, data loading and evaluations included, Python and torch start-up
excluded. seeds_way.py says what "the seeds' way" is.
"""

import argparse
import contextlib
import dataclasses
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import dora_example  # noqa: E402
from loradora.config import load_config, resolve_device  # noqa: E402
from loradora import pipeline as steps  # noqa: E402
from seeds_way import seeds_pipeline  # noqa: E402


def project_pipeline(config, device) -> dict:
    """dora_example.main's steps up to the report (the run folder in a temporary one, which the
    seeds' way does not write: the first seed's adapter files and summary.json are in the time)."""
    with tempfile.TemporaryDirectory() as out:
        config = dataclasses.replace(config, output=dataclasses.replace(config.output, dir=out, run_name="run"))
        with steps.open_run(config) as run:
            data = steps.load_data(run)
            bases = steps.pretrain(run, data)
            steps.tune(run, data)
            steps.finetune(run, data, bases)
            steps.compare(run)
        return {name: result.test_accuracy for name, result in run.cells[0].summary.data["methods"].items()}


def timed(pipeline, config, device) -> tuple[float, dict]:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        accuracies = pipeline(config, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, accuracies


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two this many times")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args()
    # Like for like: the seeds' way neither reuses a cached base nor records the dM/dD analysis.
    config = load_config(dora_example.DEFAULT_CONFIG,
                         ["cache.enabled=false", "analysis.every_n_batches=null", *args.overrides],
                         project=dora_example.PROJECT)
    device = resolve_device(config.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    times = {"project": [], "seeds' way": []}
    for repeat in range(args.repeats):
        for name, pipeline in [("project", project_pipeline), ("seeds' way", seeds_pipeline)]:
            seconds, accuracies = timed(pipeline, config, device)
            times[name].append(seconds)
            shown = ", ".join(f"{m} {a:.2f}%" for m, a in accuracies.items())
            print(f"{name:>10}: {seconds:6.1f} s  ({shown})", flush=True)
    project, seeds = (statistics.median(times[name]) for name in times)
    print(f"median: project {project:.1f} s, seeds' way {seeds:.1f} s; "
          f"project / seeds' way = {project / seeds:.3f} (seeds' way is {seeds / project:.1f}x slower)")


if __name__ == "__main__":
    main()
