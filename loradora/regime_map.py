"""A map of regimes (configs/map.yaml, issue 19): where DoRA helps, ties or loses against LoRA.

A map is one run per cell, an angle of rotation (``map.rotate_degrees``) by a fine-tuning set size
(``map.train_subsets``), each an ordinary run in a folder of its own under the map's: every
method's rate tuned on validation, on the tuning seeds, then DoRA - LoRA at every rank over the
compared seeds. The cells are one plan (loradora/plan.py, loradora/pipeline.py): their pretraining,
the same in every cell (``finetune`` keys are not in the base's inputs), is one set of jobs, so
every cell of a seed adapts the same base, and their other jobs are ready side by side, for Ray
to spread; ``same_bases`` in map.json checks it on the bases' test scores.

Afterwards every (cell, rank) question is answered once more, over seeds and new test images
(stats.two_way_difference, from each cell's test_correct.pt), at two levels: raw (95% each) and
Bonferroni-adjusted for every question the map asks (cells x ranks), so the whole map holds at 95%.
The verdict reads the adjusted interval. Written to the map's folder: map.json, map.md (the table)
and map.png (the heatmap).
"""

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from loradora.config import Config, MapConfig, load_config, resolve_device, to_dict, validate
from loradora.experiment import adapter_pairs
from loradora.files import write_atomic, write_json
from loradora.per_image import HITS_FILE, ImageHits
from loradora.plots import draw_map, load_summary, save_figure
from loradora.run_folder import environment
from loradora.stats import POWER, equivalence_rule, short_verdict, two_way_difference
from loradora.trends import design, fit_trends


@dataclass(frozen=True)
class Cell:
    """One cell of the map: the task rotated by ``rotate_degrees``, fine-tuned on ``train_subset``
    images of its pool (None: the whole pool); for ``finetune.steps`` batches, or, in the
    fixed-passes arm, for ``passes`` epochs; its rates chosen by the tuning seeds (``tuning``
    1) or by map.second_tuning_seeds (2)."""
    rotate_degrees: float
    train_subset: int | None
    passes: int | None = None
    tuning: int = 1

    @property
    def name(self) -> str:
        return (f"rotate{self.rotate_degrees:g}_n{self.train_subset or 'all'}" + (f"_passes{self.passes}" if self.passes else "")
                + ("_tuning2" if self.tuning == 2 else ""))

    def config(self, config: Config, folder: Path) -> Config:
        """``config`` as this cell's own run, in ``folder``/<name>."""
        settings = config.map
        finetune = dataclasses.replace(config.finetune, rotate_degrees=self.rotate_degrees, train_subset=self.train_subset)
        experiment = config.experiment
        if self.passes:  # the same sizes for a fixed number of passes: the step budget no longer fixed
            finetune = dataclasses.replace(finetune, steps=None, epochs=self.passes)
            experiment = dataclasses.replace(experiment, ranks=list(settings.fixed_passes_ranks))
        if self.tuning == 2:
            experiment = dataclasses.replace(experiment, tuning_seeds=list(settings.second_tuning_seeds))
        cell = dataclasses.replace(config, finetune=finetune, experiment=experiment, map=MapConfig(),
                                   output=dataclasses.replace(config.output, dir=str(folder), run_name=self.name))
        validate(cell)
        return cell


@dataclass(frozen=True)
class Answer:
    """DoRA - LoRA at one cell and rank: the accuracies, the rates chosen, and both intervals."""
    rotate_degrees: float
    train_subset: int | None
    n_train: int
    rank: int
    lora_accuracy: float
    dora_accuracy: float
    lora_lr: float
    dora_lr: float
    this_test_set: list[float]      # the cell's own seed-only interval, 95%, unadjusted
    new_images: dict                # stats.TwoWayDifference.to_dict, its ci adjusted for the whole map
    verdict: str                    # from the adjusted interval: dora, lora, tie or undecided
    raw_verdict: str                # the same from the 95% interval alone
    seeds_needed: int | None        # undecided: the seeds that would settle it with 80% power (None: none would)
    passes: int | None = None       # the fixed-passes arm's epochs; None: finetune.steps batches
    second_tuning: dict | None = None  # the same question at the second tuning set's rates: lrs, mean, ci, verdict
    per_seed: dict[int, float] = dataclasses.field(default_factory=dict)  # seed -> DoRA - LoRA, points (the trends')

    @property
    def rates_agree(self) -> bool | None:
        """Whether both tuning sets chose the same rates (None: no second set)."""
        if self.second_tuning is None:
            return None
        return (self.lora_lr, self.dora_lr) == (self.second_tuning["lora_lr"], self.second_tuning["dora_lr"])

    @property
    def settled(self) -> bool:
        """A verdict published as settled: it decides (dora, lora or tie), and, with a second tuning
        set, that set's rates give the same verdict."""
        return self.verdict != "undecided" and (self.second_tuning is None or self.second_tuning["verdict"] == self.verdict)


def cells(settings: MapConfig) -> list[Cell]:
    """The map's cells: angle x size at the step budget, then the fixed-passes arm (map.fixed_passes),
    then each again with its rates chosen by the second tuning set (map.second_tuning_seeds)."""
    first = [Cell(angle, size) for angle in settings.rotate_degrees for size in settings.train_subsets]
    if settings.fixed_passes:
        first += [Cell(angle, size, settings.fixed_passes) for angle in settings.fixed_passes_degrees
                  for size in settings.train_subsets]
    second = [dataclasses.replace(cell, tuning=2) for cell in first] if settings.second_tuning_seeds else []
    return first + second


def write_map(folder: Path, config: Config, names: list[str], wall: float, machine: dict | None = None) -> None:
    """The map over its finished cells (each a run in ``folder``/<name>): map.json, map.md and
    map.png in ``folder``, and its table on the console. ``machine``: the environment the cells
    ran in (None: this one)."""
    summaries = {cell: load_summary(folder / cell.name) for cell in cells(config.map) if cell.name in names}
    answers = answer(folder, summaries, config.experiment.margin)
    report = {"status": "complete", "cells": names, "wall_seconds": wall,
              "environment": machine or environment(resolve_device(config.device)),
              "same_bases": same_bases(summaries.values()), "family": len(answers),
              "adjustment": f"Bonferroni over {len(answers)} comparisons (cells x ranks)",
              "answers": [{**dataclasses.asdict(a), "rates_agree": a.rates_agree, "settled": a.settled} for a in answers],
              "trends": trends(answers), "config": to_dict(config)}
    write_json(folder / "map.json", report)
    table = format_map(answers, report) + "\n\n" + format_trends(report["trends"])
    if config.map.second_tuning_seeds:
        table += "\n\n" + format_stability(answers, config)
    write_atomic(folder / "map.md", table + "\n")
    steps_arm = [a for a in answers if a.passes is None]
    if steps_arm:
        save_figure(draw_map(steps_arm, config.experiment.margin, len(answers)), folder / "map.png")
    print("\n" + table + f"\n\nmap: {folder}/ ({wall / 60:.1f} min)")


def answer(folder: Path, summaries: dict[Cell, dict], margin: float) -> list[Answer]:
    """DoRA - LoRA at every finished cell (its run's summary, ``plots.load_summary``) and rank, the
    intervals adjusted for all of them at once: the family is the first tuning set's questions,
    both arms. Each is asked again at the second tuning set's rates, at the same level."""
    questions = [(cell, summary, pair) for cell, summary in summaries.items() if cell.tuning == 1
                 for pair in tuned_pairs(summary)]
    answers = []
    for cell, summary, pair in questions:
        first = ask(folder / cell.name, summary, pair, len(questions), margin)
        again = dataclasses.replace(cell, tuning=2)
        if first is None:
            continue  # no interval: the cell's own report says why
        if again in summaries and (second := ask(folder / again.name, summaries[again], pair, len(questions), margin)):
            first = dataclasses.replace(first, second_tuning={
                "lora_lr": second.lora_lr, "dora_lr": second.dora_lr, "mean": second.new_images["mean"],
                "ci": second.new_images["ci"], "verdict": second.verdict, "raw_verdict": second.raw_verdict,
                "per_seed": second.per_seed})
        answers.append(dataclasses.replace(first, rotate_degrees=cell.rotate_degrees, train_subset=cell.train_subset,
                                           passes=cell.passes))
    return answers


def tuned_pairs(summary: dict) -> list[tuple[str, str]]:
    """(dora, lora) at every rank, at their tuned rates."""
    return [(dora, lora) for dora, lora in adapter_pairs(summary["methods"]) if summary["methods"][dora].rates == "tuned"]


def ask(folder: Path, summary: dict, pair: tuple[str, str], family: int, margin: float) -> Answer | None:
    """One question, DoRA - LoRA at one rank, in one cell's run (``folder``), over seeds and new
    test images, adjusted for a ``family`` of questions; None with fewer than 2 seeds finished."""
    (dora, lora), methods = pair, summary["methods"]
    hits = ImageHits.load(folder / HITS_FILE)
    finished = hits.seeds(dora) & hits.seeds(lora)
    seeds = [seed for seed in summary["seeds"] if seed in finished]
    if len(seeds) < 2:
        return None
    correct_dora, correct_lora = hits.matrix(dora, seeds), hits.matrix(lora, seeds)  # (seed, image)
    both = two_way_difference(correct_dora, correct_lora, comparisons=family)
    needed = both.seeds_needed(margin)
    per_seed = 100 * (correct_dora.double().mean(dim=1) - correct_lora.double().mean(dim=1))
    return Answer(0.0, None, methods[lora].n_train, methods[dora].rank,
                  methods[lora].test_accuracy, methods[dora].test_accuracy, methods[lora].lr, methods[dora].lr,
                  summary["comparisons"][f"{dora} - {lora}"]["ci95"], both.to_dict(), short_verdict(both.ci, margin),
                  short_verdict(both.ci95, margin), needed[0] if needed else None,
                  per_seed=dict(zip(seeds, per_seed.tolist())))


# The ranks of the DoRA paper's rank-robustness study (Liu et al. 2024: ranks 4 to 64): a
# trend over the map's whole range can come from its low ranks alone, so it is fitted within these too.
PAPER_RANKS = (4, 64)


def trends(answers: list[Answer]) -> dict:
    """DoRA - LoRA fitted on log2 rank, log2 size / 3, the angle and rank x angle, seed by seed, each
    coefficient with its 95% interval over seeds (loradora/trends.py): per arm, and at the second
    tuning set's rates where there is one. An arm with too few questions or seeds has none."""
    fits = {}
    steps, passes = ([a for a in answers if a.passes is None], [a for a in answers if a.passes is not None])
    low, high = PAPER_RANKS
    papers = [a for a in steps if low <= a.rank <= high]
    papers = papers if len(papers) < len(steps) else []  # only where the map reaches outside that range
    for name, arm, second in (("fixed steps", steps, False), ("fixed passes", passes, False),
                              ("fixed steps, second tuning set", steps, True),
                              (f"fixed steps, ranks {low} to {high}", papers, False),
                              (f"fixed steps, ranks {low} to {high}, second tuning set", papers, True)):
        rows = [a.second_tuning["per_seed"] if second else a.per_seed for a in arm if not second or a.second_tuning]
        if not rows or len(rows) != len(arm):
            continue
        seeds = sorted(set().union(*rows))
        differences = {seed: [row.get(seed) for row in rows] for seed in seeds}
        plan = design(arm)
        if len(plan.names) >= len(arm) or len(seeds) < 2:
            continue  # as many columns as questions: nothing left to estimate a trend from
        fits[name] = fit_trends(differences, plan).to_dict()
    return fits


def format_trends(fits: dict) -> str:
    """Each arm's coefficients with their intervals and one-line readings."""
    if not fits:
        return "Trends: none fitted (too few questions or seeds)."
    lines = ["Trends of DoRA − LoRA (test accuracy points), each seed's least-squares fit on log2 rank, "
             "log2 size / 3, the angle and rank × angle; 95% t interval over seeds (loradora/trends.py):"]
    for name, fit in fits.items():
        lines.append(f"\n{name} ({fit['note']}):")
        lines += [f"- {c['reading']}" for c in fit["coefficients"]]
    return "\n".join(lines)


def same_bases(summaries) -> bool:
    """Whether every cell's bases scored alike on the plain test set, seed for seed."""
    scores = [summary["methods"]["pretrained"].test_accuracies for summary in summaries]
    return all(score == scores[0] for score in scores)


def format_map(answers: list[Answer], report: dict) -> str:
    """The map as a markdown table, one row per cell and rank."""
    rows = ["| rotation | fine-tuning images | training | rank | LoRA | DoRA | lr LoRA / DoRA | DoRA − LoRA "
            "| 95% CI, this test set | 95% CI, new images | adjusted CI, new images | verdict (raw) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in answers:
        ci95, ci = a.new_images["ci95"], a.new_images["ci"]
        verdict = a.verdict + (f" (~{a.seeds_needed} seeds)" if a.verdict == "undecided" and a.seeds_needed else "")
        verdict += "; rates differ by tuning set" if a.rates_agree is False else ""
        verdict += "; not settled: the second tuning set's rates give another verdict" if (
            a.verdict != "undecided" and not a.settled) else ""
        rows.append(f"| {a.rotate_degrees:g}° | {a.n_train:,} | {arm(a)} | {a.rank} | {a.lora_accuracy:.2f}% | {a.dora_accuracy:.2f}% "
                    f"| {a.lora_lr:g} / {a.dora_lr:g} | {a.new_images['mean']:+.3f} "
                    f"| [{a.this_test_set[0]:+.3f}, {a.this_test_set[1]:+.3f}] | [{ci95[0]:+.3f}, {ci95[1]:+.3f}] "
                    f"| [{ci[0]:+.3f}, {ci[1]:+.3f}] | {verdict} ({a.raw_verdict}) |")
    confidence = 1 - 0.05 / max(report["family"], 1)
    margin = report["config"]["experiment"]["margin"]
    return (f"DoRA − LoRA, test accuracy points, by cell and rank; adjusted: {report['adjustment']}, each at "
            f"{100 * confidence:.4g}%, so that all hold together at 95%. The verdict reads the adjusted interval "
            f"for new test images (dora or lora: it excludes zero on that side; tie: "
            f"{equivalence_rule(confidence, margin)} points; undecided: neither, with the seeds that would "
            f"settle it with {100 * POWER:.0f}% power at the observed mean and spread); (raw) reads the 95% "
            f"one (tie: TOST at 2.5% each). Status: {report['status']}; "
            f"{report['wall_seconds'] / 60:.1f} min on {report['environment']['device_name']} "
            f"({report['environment']['cpu_threads']} threads), torch {report['environment']['torch']}; "
            f"the same base in every cell: {report['same_bases']}.\n\n" + "\n".join(rows))


def arm(a: Answer) -> str:
    """Which arm asked the question: the map's fixed step budget, or a fixed number of passes."""
    return "fixed steps" if a.passes is None else f"{a.passes} pass{'' if a.passes == 1 else 'es'}"


def format_stability(answers: list[Answer], config: Config) -> str:
    """How each question's rates and verdict change when only the tuning seeds change: both
    choices and the verdict under each, at the same adjusted level."""
    first, second = config.experiment.tuning_seeds, config.map.second_tuning_seeds
    rows = ["| rotation | fine-tuning images | training | rank | lr LoRA / DoRA, set 1 | verdict, set 1 "
            "| lr LoRA / DoRA, set 2 | DoRA − LoRA, set 2 | verdict, set 2 | rates agree | settled |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in answers:
        again = a.second_tuning
        if again is None:
            continue
        rows.append(f"| {a.rotate_degrees:g}° | {a.n_train:,} | {arm(a)} | {a.rank} | {a.lora_lr:g} / {a.dora_lr:g} "
                    f"| {a.verdict} | {again['lora_lr']:g} / {again['dora_lr']:g} | {again['mean']:+.3f} "
                    f"| {again['verdict']} | {'yes' if a.rates_agree else '**no**'} | {'yes' if a.settled else 'no'} |")
    agree = sum(bool(a.rates_agree) for a in answers if a.second_tuning)
    same = sum(a.second_tuning["verdict"] == a.verdict for a in answers if a.second_tuning)
    asked = sum(a.second_tuning is not None for a in answers)
    return (f"Rate stability: each question's rates chosen by tuning seeds {first} (set 1) and again by "
            f"{second} (set 2), each on the same validation images; the compared seeds trained at both where "
            f"they differ. Both sets chose the same rates in {agree} of {asked} questions; the verdict was "
            f"the same in {same} of {asked}. A verdict is settled only where it decides and set 2 agrees.\n\n"
            + "\n".join(rows))


def rewrite(folder: Path) -> None:
    """A finished map's map.json, map.md and map.png written again from its cells' summaries and
    test_correct.pt, by this code's analysis (a new trend fit or table needs no retraining); its
    wall time and machine are kept from its map.json."""
    config = load_config(folder / "config.yaml")
    before = json.loads((folder / "map.json").read_text())
    names = [cell.name for cell in cells(config.map) if (folder / cell.name / "summary.json").exists()]
    write_map(folder, config, names, before["wall_seconds"], before["environment"])


if __name__ == "__main__":  # python -m loradora.regime_map results/<map>
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "map.json").exists():
        sys.exit("usage: python -m loradora.regime_map <a finished map's folder, with its map.json>")
    rewrite(Path(sys.argv[1]))
