"""LoRA vs DoRA on MNIST: pretrain an MLP, fine-tune a LoRA and a DoRA copy of it, compare.

    python dora_example.py                                   # configs/default.yaml
    python dora_example.py --config configs/smoke.yaml       # seconds, on a data subset
    python dora_example.py lora.rank=8 dora.rank=8         # any key, as key.sub=value
    python dora_example.py --config configs/seeds.yaml       # 5 seeds: does DoRA beat LoRA?

``main`` is the experiment, one step a line (loradora/pipeline.py): open the run (a new folder
under results/, or with --resume a stopped one); load MNIST onto the device, and make the
fine-tuning task from it; pretrain the MLP with every weight trainable, one base per seed (or reuse
a base an earlier run pretrained from the same inputs); with experiment.lrs, tune each method's
learning rate on a validation split held out of the training images; fine-tune every method (lora,
dora, and the baselines full and head; at each rank of a sweep) from a frozen copy of its seed's
base, recording how its weights move (DoRA section 3.2), and score it on the whole test set;
compare the seeds (mean +- std, DoRA - LoRA with a 95% interval and a verdict); report the tables
and draw the plots. Each step that trains runs the jobs the plan (loradora/plan.py) gives it, many
seeds at once as populations (loradora/population.py), and keeps each job's result in the run
folder, so a stopped run continues where it stopped:

    python dora_example.py --resume results/<run>

Results go to results/<run_name>/ (config.yaml, metrics.jsonl, summary.json, *.png, jobs/, and
the first seed's models and adapters).

This script is the command line: it checks the arguments and the config before torch loads, so
--help and a bad key answer at once, then runs the pipeline.
"""

import argparse
import sys
import textwrap
from pathlib import Path

from loradora.config import Config, ConfigError, differences, load_config

PROJECT = Path(__file__).resolve().parent  # the defaults live here: configs/, data/, results/
DEFAULT_CONFIG = PROJECT / "configs" / "default.yaml"
PATH_RULE = ("Relative paths typed on the command line (--config, data.root=, output.dir=, cache.dir=) are "
             "relative to the current folder; the defaults, and paths written in a config file, are "
             f"relative to the project folder ({PROJECT}): data/ and results/ are found there from anywhere.")
EXIT_CODES = {
    0: "done",
    1: "no usable data, the pretraining diverged, or a result file could not be written",
    2: "bad config or output folder, a run folder in use, or a resume refused: nothing was written",
    130: "stopped by Ctrl-C (SIGINT): finished jobs kept, summary.json marked interrupted; --resume continues it",
    143: "stopped by SIGTERM (Slurm, Kubernetes, Ray, systemd, timeout): the same",
}


def main(argv: list[str] | None = None) -> int:
    """The experiment, step by step; returns an exit code (EXIT_CODES)."""
    args = parse_args(argv)
    try:
        config = read_config(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # Deferred until the config is good: torch and the modules built on it take over a second to
    # import (BENCHMARKS.md, start-up).
    from loradora import pipeline
    from loradora.run_folder import run_label

    try:
        run = pipeline.open_run(config, resume=args.resume, other_machine=args.other_machine,
                                label=run_label((args.config or DEFAULT_CONFIG).stem, args.overrides))
    except pipeline.RunRefused as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with run:  # a stop signal, a failed write or missing data ends the steps here, as its exit code
        data = pipeline.load_data(run)
        bases = pipeline.pretrain(run, data)
        pipeline.tune(run, data)
        pipeline.finetune(run, data, bases)
        pipeline.compare(run)
        pipeline.report(run)
    return run.exit_code


def read_config(args: argparse.Namespace) -> Config:
    """The config the arguments name; with --resume, the stopped run's own (its config.yaml), which
    --config or overrides may not change."""
    if args.resume is None:
        return load_config(args.config or DEFAULT_CONFIG, args.overrides, project=PROJECT)
    saved = args.resume / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"--resume {args.resume}: no run there (it has no config.yaml)")
    config = load_config(saved)
    if args.config is not None or args.overrides:
        asked = load_config(args.config or saved, args.overrides, project=PROJECT)
        if differ := differences(config, asked):
            raise ConfigError(f"--resume {args.resume}: the run was started with other settings ({'; '.join(differ)}); "
                              f"resume it as it was, without --config or overrides, or start a new run")
    return config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    codes = "\n".join(f"  {code:<3}  {meaning}" for code, meaning in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        description="Pretrain an MLP on MNIST, fine-tune LoRA and DoRA copies of it, compare them.",
        epilog=f"{textwrap.fill(PATH_RULE, 100)}\n\nExample: python dora_example.py lora.rank=8 dora.rank=8 "
               f"output.run_name=r8\n\nExit codes:\n{codes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path,
                        help=f"YAML file; keys it leaves out keep their defaults (default: {DEFAULT_CONFIG})")
    parser.add_argument("--resume", type=Path, metavar="RUN_FOLDER",
                        help="continue a stopped run (results/<run>) from its own config: only the jobs it had not "
                             "finished train")
    parser.add_argument("--other-machine", action="store_true",
                        help="with --resume: continue on another CPU model or thread count, whose float32 results "
                             "differ in their last bits (summary.json says which jobs ran where)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="set any config key, e.g. finetune.epochs=3 finetune.methods=[dora]")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
