"""Runs side by side: ``python -m loradora.compare results/<run> [results/<run> ...]``.

One markdown table, one row per run and method: the config keys that differ between the runs
(read from each run's config.yaml, as dotted keys; output.* is where a run wrote, not what it
ran, so it is left out), then each method's test accuracy (mean ± std over seeds, or the one
seed's), then DoRA - LoRA with its interval where the run has one (summary.json's comparisons),
then the run's status. A run that did not finish is marked in its rows' status, never mixed in
silently; a summary.json this code cannot read gets one line under the table saying why, and the
other runs still print.

Reads only the run folders' files (config.yaml, summary.json, map.json); trains nothing.
"""

import argparse
import csv
import json
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from loradora.config import flatten

if TYPE_CHECKING:
    from loradora.results import MethodResult, OverSeeds

EXIT_CODES = {
    0: "the table was printed (runs that did not finish, or whose files cannot be read, are marked in it)",
    1: "the --csv file could not be written",
    2: "bad arguments: no runs, or a path that is not a run folder; nothing was printed",
}
IGNORED_SECTIONS = ("output.",)  # where a run wrote and what it was called: not what it ran
SUMMARY_KEYS = ("status", "methods", "comparisons")  # what the table reads; pipeline.Summary writes them
RUN_FILES = ("config.yaml", "summary.json", "jobs", "map.json")  # any one: a run folder, finished or not
HOW_SHOWN = (
    "A map (configs/map.yaml; its folder has map.json and one run folder per cell) gets one row pointing "
    "to its map.md; to compare its cells, pass their folders. A rank sweep (experiment.ranks) gets one row "
    "per method and rank (lora_r4, dora_r4, ...), DoRA - LoRA on each dora row. A method at the shared "
    "rate beside its tuned one (experiment.shared_lr: dora@shared) has rows of its own, so labelled. "
    "Intervals are 95% unless the cell names another level (a sweep's are Bonferroni-adjusted over its "
    "ranks); a run of one seed has none ('-').")


class NotARun(ValueError):
    """A path given on the command line that is not a run folder: exit code 2."""


@dataclass(frozen=True)
class Comparison:
    """One DoRA - LoRA pair of summary.json's comparisons (experiment.compare_adapters), as the table
    shows it; found by its DoRA's rank and rates, the fields the pair was made by."""
    dora_rank: int | None
    rates: str
    mean: float
    ci: tuple[float, float]
    confidence: float

    @classmethod
    def from_json(cls, entry: dict) -> "Comparison":
        return cls(entry["ranks"]["dora"], entry["rates"], float(entry["mean"]), tuple(entry["ci"]),
                   float(entry["confidence"]))


@dataclass
class RunRecord:
    """What one run folder holds, as far as the table goes."""
    label: str                      # the path as given on the command line
    folder: Path
    config: dict | None             # config.yaml as dotted keys; None where it cannot be read
    status: str                     # summary.json's status, or what stands in for it
    methods: dict[str, "MethodResult | OverSeeds"]
    comparisons: list[Comparison]
    problems: list[str]             # one line each: what is wrong with one of its files
    is_map: bool = False


# ---- read a run folder ----


def read_run(label: str) -> RunRecord:
    """The run folder at ``label``; NotARun when it is none."""
    folder = Path(label)
    if not folder.is_dir():
        raise NotARun(f"{label} is not a folder")
    if not any((folder / name).exists() for name in RUN_FILES):
        raise NotARun(f"{label} is not a run folder (it has none of {', '.join(RUN_FILES)})")
    run = RunRecord(label, folder, None, "", {}, [], [])
    run.config = read_config(run)
    run.is_map = (folder / "map.json").exists() or (run.config or {}).get("map.rotate_degrees") is not None
    if run.is_map:  # its summaries are its cells'; the map's own table is map.md
        run.status = "map: see map.md" if (folder / "map.md").exists() else "map, unfinished: no map.md"
    else:
        read_summary(run)
    return run


def read_config(run: RunRecord) -> dict | None:
    """config.yaml, the resolved config the run used, as dotted keys; None (and a problem) without it."""
    path = run.folder / "config.yaml"
    try:
        values = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        # a run stopped before it loaded the data writes no config.yaml: its summary.json may hold one
        return None
    except (OSError, yaml.YAMLError) as error:
        run.problems.append(f"{run.label}: config.yaml cannot be read ({one_line(error)}); its keys show as '?'")
        return None
    if not isinstance(values, dict):
        run.problems.append(f"{run.label}: config.yaml is not a config (it holds {type(values).__name__}); "
                            f"its keys show as '?'")
        return None
    return flatten(values)


def read_summary(run: RunRecord) -> None:
    """summary.json's status, methods and comparisons into ``run``; what is wrong with it, if anything,
    into its problems and status."""
    path = run.folder / "summary.json"
    if not path.exists():
        # summary.json is first written when the pretraining ends (pipeline.Summary)
        run.status = "no summary.json: stopped before its first phase ended, or still running"
        return
    try:
        summary = json.loads(path.read_text())
        problem = summary_problem(summary)
    except (OSError, UnicodeDecodeError) as error:
        problem = f"cannot be read ({one_line(error)})"
    except json.JSONDecodeError as error:
        problem = f"is not JSON ({error.msg} at line {error.lineno}, column {error.colno})"
    if problem is None:
        problem = read_results(run, summary)
    if problem is not None:
        run.problems.append(f"{run.label}: summary.json {problem}; its rows are left out")
        run.status, run.methods, run.comparisons = "unreadable summary.json", {}, []
        return
    run.status = status_label(summary["status"])
    if run.config is None and isinstance(summary.get("config"), dict):
        run.config = flatten(summary["config"])


def summary_problem(summary) -> str | None:
    """What makes ``summary`` not one this code wrote, or None."""
    if not isinstance(summary, dict):
        return f"holds a JSON {type(summary).__name__}, not a run's summary"
    if missing := [key for key in SUMMARY_KEYS if key not in summary]:
        return f"has no {', '.join(missing)} (written by another version of this code, or not by it)"
    if not isinstance(summary["methods"], dict) or not isinstance(summary["comparisons"], dict):
        return "has methods or comparisons that are not objects"
    return None


def read_results(run: RunRecord, summary: dict) -> str | None:
    """The methods as the records they were written from, and the comparisons; what is wrong, or None."""
    from loradora.results import from_json  # here, not at the top: it loads torch, which --help need not wait for

    for name, entry in summary["methods"].items():
        try:
            run.methods[name] = from_json(entry)
        except (ValueError, TypeError, AttributeError) as error:
            return f"method {name}: {one_line(error)}"
    for name, entry in summary["comparisons"].items():
        try:
            run.comparisons.append(Comparison.from_json(entry))
        except (KeyError, ValueError, TypeError) as error:
            return f"comparison {name} lacks {one_line(error)}"
    return None


def status_label(status: str) -> str:
    """summary.json's status as the table's status column says it."""
    if status == "running":  # Summary.close marks a stop it sees; SIGKILL or a crash leaves "running"
        return "unfinished: still running, or killed before it could mark itself"
    return str(status)


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


# ---- the table ----

ABSENT = object()  # a key a run's config.yaml lacks (an older version's), unlike a key set to null


def differing_keys(runs: list[RunRecord]) -> list[str]:
    """The config keys whose values are not the same in every run whose config could be read
    (a key one run lacks differs too), output.* left out; in config order."""
    configs = [run.config for run in runs if run.config is not None]
    keys = dict.fromkeys(key for config in configs for key in config)
    return [key for key in keys if not key.startswith(IGNORED_SECTIONS)
            and any(config.get(key, ABSENT) != configs[0].get(key, ABSENT) for config in configs)]



def header(keys: list[str]) -> list[str]:
    return ["run", *keys, "method", "rank", "test accuracy %", "DoRA − LoRA [95% CI]", "status"]


def rows_of(run: RunRecord, keys: list[str]) -> list[list[str]]:
    """One row per method of ``run``; one row with no method where it has none to show."""
    settings = [config_cell(run.config, key) for key in keys]
    if not run.methods:
        return [[run.label, *settings, "-", "-", "-", "-", run.status]]
    return [[run.label, *settings, name, "-" if result.rank is None else str(result.rank), accuracy_cell(result),
             difference_cell(result, run.comparisons), run.status]
            for name, result in run.methods.items()]


def config_cell(config: dict | None, key: str) -> str:
    """A config value as an override would write it (null, true, [1, 2, 3])."""
    if config is None:
        return "?"
    value = config.get(key, ABSENT)
    if value is ABSENT:
        return "absent"
    return yaml.safe_dump(value, default_flow_style=True, width=1_000).strip().removesuffix("...").strip()


def accuracy_cell(result: "MethodResult | OverSeeds") -> str:
    n_seeds = getattr(result, "n_seeds", None)  # an OverSeeds record: several seeds
    if n_seeds is None:
        return "diverged" if result.diverged else f"{result.test_accuracy:.2f}"
    if result.test_accuracy is None:
        return "diverged on every seed"
    diverged = f", {result.n_diverged} diverged" if result.n_diverged else ""
    spread = f" ± {result.test_accuracy_std:.2f}" if result.test_accuracy_std is not None else ""
    return f"{result.test_accuracy:.2f}{spread} ({n_seeds} seed{'s' if n_seeds != 1 else ''}{diverged})"


def difference_cell(result: "MethodResult | OverSeeds", comparisons: list[Comparison]) -> str:
    """DoRA - LoRA on the dora row of its pair; "-" on the others, and where the run has none."""
    if result.method != "dora":
        return "-"
    found = next((c for c in comparisons if c.dora_rank == result.rank and c.rates == result.rates), None)
    if found is None:
        return "-"
    level = "" if round(found.confidence, 6) == 0.95 else f" ({100 * found.confidence:.4g}% CI)"
    return f"{found.mean:+.2f} [{found.ci[0]:+.2f}, {found.ci[1]:+.2f}]{level}"


def markdown(columns: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(columns), "|" + "|".join("---" for _ in columns) + "|", *map(line, rows)])


def notes(runs: list[RunRecord]) -> list[str]:
    """The lines under the table that say how it shows what these runs hold."""
    results = [result for run in runs for result in run.methods.values()]
    lines = []
    if any(run.is_map for run in runs):
        lines.append("A map is one row pointing to its map.md (its table); pass its cell folders to compare "
                     "the cells.")
    if any(run.config and run.config.get("experiment.ranks") for run in runs if not run.is_map):
        lines.append("A rank sweep (experiment.ranks) has one row per method and rank (lora_r4, dora_r4, ...); "
                     "its intervals are Bonferroni-adjusted over its ranks.")
    if any(result.rates == "shared" for result in results):
        lines.append("Rows named <method>@shared: that method at the shared rate finetune.lr, beside its own "
                     "tuned rate (experiment.shared_lr).")
    if any(not run.comparisons and {"lora", "dora"} <= {r.method for r in run.methods.values()} for run in runs):
        lines.append("DoRA − LoRA '-' on a dora row: that run has no paired interval (one seed, or fewer than "
                     "2 seeds finished both).")
    if any(run.status != "complete" and run.methods for run in runs):
        lines.append("Rows whose status is not complete hold only what their run finished before it stopped.")
    return lines


def write_csv(path: Path, columns: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(columns)
        writer.writerows(rows)


# ---- the command line ----


def main(argv: list[str] | None = None) -> int:
    """The table of the runs ``argv`` names; returns an exit code (EXIT_CODES)."""
    args = parse_args(argv)
    if not args.runs:
        print("error: no runs given: python -m loradora.compare results/<run> [results/<run> ...]", file=sys.stderr)
        return 2
    try:
        runs = [read_run(label) for label in args.runs]
    except NotARun as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    keys = differing_keys(runs)
    columns, rows = header(keys), [row for run in runs for row in rows_of(run, keys)]
    print(markdown(columns, rows))
    below = notes(runs) + [problem for run in runs for problem in run.problems]
    if below:
        print("\n" + "\n".join(below))
    if args.csv is not None:
        try:
            write_csv(args.csv, columns, rows)
        except OSError as error:
            print(f"error: cannot write {args.csv}: {error.strerror or error}", file=sys.stderr)
            return 1
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    codes = "\n".join(f"  {code:<3}  {meaning}" for code, meaning in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="python -m loradora.compare",
        description="Runs side by side: one markdown table, a row per run and method, with the config keys "
                    "that differ between the runs (output.* left out), test accuracy, DoRA - LoRA with its "
                    "interval, and each run's status (runs that did not finish are marked).",
        epilog=f"{textwrap.fill(HOW_SHOWN, 100)}\n\nExample: python -m loradora.compare results/default "
               f"results/r8 --csv runs.csv\n\nExit codes:\n{codes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="*", metavar="RUN_FOLDER", help="a run folder, results/<run>")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="also write the table to FILE as CSV")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
