"""The text a run prints at its end: the results table, DoRA - LoRA with its interval in plain words,
the rank-sweep table and the weight-decomposition lines. Reads only the summary (its methods as
loradora.results records); every table goes through ``align``."""

import textwrap

from loradora.results import MethodResult, OverSeeds, SeedResults, accuracy_std
from loradora.choices import TEACHER_TASKS
from loradora.stats import short_verdict
from loradora.tasks import task_label


def format_report(summary: dict) -> str:
    parts = [align(results_rows(summary))]
    parts.append(test_set_note(summary["config"]["finetune"]))
    parts.append(cache_note(summary["runs"]))
    parts.append(precision_note(summary["config"]["precision"]))
    if summary.get("tuning"):
        parts.append(format_tuning(summary["tuning"]))
    if summary.get("rate_sensitivity"):
        parts.append(format_rate_sensitivity(summary["rate_sensitivity"], len(next(iter(summary["tuning"].values()))["seeds"])))
    comparisons, seeds = summary["comparisons"], summary["seeds"]
    if summary["config"]["experiment"]["ranks"]:
        parts.append(align(rank_rows(summary)))  # with DoRA - LoRA and its interval at each rank
        if comparisons:
            parts.append(arrow(several_intervals(comparisons)))
    elif comparisons:
        parts.append(format_comparisons(comparisons))
    elif {"lora", "dora"} <= {result.method for result in summary["methods"].values()} and len(seeds) == 1:
        parts.append("One seed: no confidence interval. Set experiment.seeds (configs/seeds.yaml) to ask "
                     "whether DoRA beats LoRA.")
    if summary.get("part_comparisons"):
        parts.append(format_comparisons(summary["part_comparisons"], "DoRA's parts alone, paired by seed"))
    if summary["decomposition"]:
        parts.append(format_decomposition(summary["decomposition"]))
    if summary.get("decomposition_unavailable"):
        parts.append("\n".join(f"{name}: no dM-on-dD line ({reason})"
                               for name, reason in summary["decomposition_unavailable"].items()))
    return "\n\n".join(part for part in parts if part)


def format_tuning(tuning: dict) -> str:
    """Each variant's mean validation accuracy at every rate it trained at, and the rate chosen;
    with experiment.extend_grid, a variant's grid may reach past the configured one."""
    first = next(iter(tuning.values()))
    grid = sorted({rate for result in tuning.values() for rate in result["validation_accuracy"]}, key=float)
    rows = [("method", "chosen lr", *(f"lr {rate}" for rate in grid))]
    for name, result in tuning.items():
        accuracy = result["validation_accuracy"]
        cells = ["-" if rate not in accuracy else "diverged" if accuracy[rate] is None else f"{accuracy[rate]:.2f}%"
                 for rate in grid]
        edge = f" ({result['edge']})" if result.get("edge") else ""
        rows.append((name, f"{result['lr']:g}{edge}", *cells))
    overlap = first.get("compared_too")
    apart = (f"; seeds {', '.join(map(str, overlap))} chose the rates and are compared too "
             f"(experiment.tuning_overlap), so their test scores are at rates they chose themselves" if overlap
             else ", apart from the compared seeds")
    text = (f"Learning rates chosen on {first['n_validation']:,} validation images (held out of the training "
            f"set), mean over seeds {', '.join(map(str, first['seeds']))}{apart}; the test set chose nothing:\n"
            + align(rows))
    extended = [f"{name} ({', '.join(f'{lr:g}' for lr in result['extended'])})"
                for name, result in tuning.items() if result.get("extended")]
    if extended:
        text += "\n" + textwrap.fill(f"Extended past the grid's edge (experiment.extend_grid): {', '.join(extended)}; "
                                     f"'-': a rate that variant did not need.", width=100)
    parts = [f"{name} λB={result['parts']['b_lr_ratio']:g}, λm={result['parts']['magnitude_lr_ratio']:g} ("
             + ", ".join(f"{pair} {'diverged' if accuracy is None else f'{accuracy:.2f}%'}"
                         for pair, accuracy in result["parts"]["validation_accuracy"].items()) + ")"
             for name, result in tuning.items() if result.get("parts")]
    if parts:
        text += "\n" + textwrap.fill(f"Multipliers of the chosen rate for B (λB) and DoRA's magnitude (λm), chosen on the "
                                     f"same validation images (experiment.b_lr_ratios, magnitude_lr_ratios): "
                                     f"{'; '.join(parts)}.", width=100)
    at_edge = [f"{name} ({result['edge']})" for name, result in tuning.items() if result.get("edge")]
    if at_edge:
        text += "\n" + textwrap.fill(f"Chosen at the grid's edge: {', '.join(at_edge)}. The best rate may lie beyond "
                                     f"the grid; widen experiment.lrs past that edge, or set experiment.extend_grid: "
                                     f"true, to know.", width=100)
    return text


def format_rate_sensitivity(sensitivity: dict, n_seeds: int) -> str:
    """DoRA - LoRA on validation at every rate of the grid, one row per rate: whether the answer
    depends on the rate (summary["rate_sensitivity"], experiment.rate_sensitivity)."""
    rows = [("pair", "lr", "lora validation", "dora validation", "dora - lora [95% CI]")]
    for pair, by_rate in sensitivity.items():
        for rate, row in by_rate.items():
            rows.append((pair, rate, *(("-", "-", "fewer than 2 seeds finished") if row is None else (
                f"{row['lora']:.2f}%", f"{row['dora']:.2f}%",
                f"{row['mean']:+.2f} {bracket(row['ci95'])}"))))
    return (f"DoRA - LoRA at every rate, on validation, paired by tuning seed ({n_seeds} seeds; each "
            f"interval its own, unadjusted):\n" + align(rows))


def format_markdown(summary: dict) -> str:
    """The run's tables as markdown, for table.md in its folder: the methods side by side, each
    rank's DoRA - LoRA in a sweep, and every pair's difference with its intervals and verdicts."""
    parts = [markdown(results_rows(summary))]
    if summary["config"]["experiment"]["ranks"]:
        parts.append(markdown(rank_rows(summary)))
    if pairs := {**summary["comparisons"], **summary.get("part_comparisons", {})}:
        parts.append(markdown(comparison_rows(pairs)))
    return "\n\n".join(parts) + "\n"


def comparison_rows(comparisons: dict) -> list[tuple[str, ...]]:
    """One row per pair: its mean difference, both intervals and both one-word verdicts."""
    rows = [("pair", "seeds", "mean, points", "interval, this test set", "verdict", "interval, new test images",
             "verdict, new test images")]
    for name, c in comparisons.items():
        images = c.get("new_test_images")
        rows.append((name, str(c["n"]), f"{c['mean']:+.2f}", f"{interval_label(c)} {bracket(c['ci'])}",
                     short_verdict(c["ci"], c["margin"], *name.split(" - ")),
                     bracket(images["ci"]) if images else "-",
                     short_verdict(images["ci"], c["margin"], *name.split(" - ")) if images else "-"))
    return rows


def results_rows(summary: dict) -> list[tuple[str, ...]]:
    """The methods side by side: one seed's table, or the mean over seeds."""
    seeds = summary["seeds"]
    return table_rows(summary["methods"]) if len(seeds) == 1 else seed_table_rows(summary["methods"], seeds)


def table_rows(methods: dict[str, MethodResult]) -> list[tuple[str, ...]]:
    """One seed's results side by side."""
    rows = [("method", "rank", "alpha", "trainable params", "test accuracy", "train s")]
    for name, result in methods.items():
        rows.append((
            name,
            dash(result.rank),
            dash(result.alpha, "g"),
            f"{result.trainable_params:,}",
            "diverged" if result.diverged else f"{result.test_accuracy:.2f}% of {result.n_test:,}",
            dash(result.train_seconds, ".1f"),
        ))
    return rows


def dash(value, fmt: str = "") -> str:
    """``value`` formatted, or "-" where it does not apply (None)."""
    return "-" if value is None else format(value, fmt)


def seed_table_rows(methods: dict[str, OverSeeds], seeds: list[int]) -> list[tuple[str, ...]]:
    """Mean +- sample std over seeds, with each seed's accuracy (up to 10 seeds: beyond, summary.json
    has them). A method that diverged for some seeds is averaged over the others, and says so."""
    per_seed = len(seeds) <= 10
    header = ("method", "rank", "trainable params", f"test accuracy, mean ± std over {len(seeds)} seeds",
              *([f"per seed ({', '.join(map(str, seeds))})"] if per_seed else []), "train s")
    rows = [header]
    for name, result in methods.items():
        rows.append((
            name,
            dash(result.rank),
            f"{result.trainable_params:,}",
            seed_accuracy_cell(result),
            *([" ".join("diverged" if accuracy is None else f"{accuracy:.2f}"
                        for accuracy in result.test_accuracies)] if per_seed else []),
            dash(result.train_seconds, ".1f"),
        ))
    return rows


def seed_accuracy_cell(result: OverSeeds) -> str:
    diverged = f" ({result.n_diverged} diverged)" if result.n_diverged else ""
    if result.test_accuracy is None:
        return "diverged on every seed"
    spread = f" ± {result.test_accuracy_std:.2f}" if result.test_accuracy_std is not None else ""
    return f"{result.test_accuracy:.2f}{spread}% of {result.n_test:,}{diverged}"


def align(rows: list[tuple[str, ...]]) -> str:
    """Columns padded to their widest cell: the first left-aligned, the rest right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def markdown(rows: list[tuple[str, ...]]) -> str:
    """The same rows as a markdown table (a '|' in a cell escaped)."""
    cells = [[cell.replace("|", "\\|") for cell in row] for row in rows]
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    lines.insert(1, "|" + "---|" * len(rows[0]))
    return "\n".join(lines)


def test_set_note(finetune: dict) -> str:
    if finetune["task"] == "same":
        return ""
    label = task_label(finetune["task"], finetune["rotate_degrees"], finetune["permutation_seed"],
                       finetune["teacher_seed"])
    if finetune["task"] in TEACHER_TASKS:
        return textwrap.fill(f"Fine-tuned on {label}: the fine-tuned methods and no_finetune (the pretrained base, "
                             f"not fine-tuned) are tested against their own seed's teacher's labels of the test "
                             f"images; pretrained against the true labels.", width=100)
    return textwrap.fill(f"Fine-tuned on {label}: the fine-tuned methods and no_finetune (the pretrained base, "
                         f"not fine-tuned) are tested on the equally shifted test set; pretrained on the "
                         f"plain MNIST test set.", width=100)


def precision_note(precision: str) -> str:
    if precision == "fp32":
        return ""
    return textwrap.fill("Trained with precision bf16: every matrix product of training in bfloat16, the weights, "
                         "gradients, optimiser and evaluation in float32. An interval near the margin may differ "
                         "from fp32's (docs/results.md measures it on configs/decisive.yaml).", width=100)


def cache_note(runs: list[SeedResults]) -> str:
    seeds = [run.seed for run in runs if run.methods["pretrained"].cached]
    if not seeds:
        return ""
    return textwrap.fill(f"Pretrained base reused from the cache for seed{'s' if len(seeds) > 1 else ''} "
                         f"{', '.join(map(str, seeds))}: its train s is that of the run that trained it.",
                         width=100)


INTERVALS_EXPLAINED = "docs/results.md#reading-the-intervals"


def format_comparisons(comparisons: dict, title: str = "Paired by seed") -> str:
    """Each pair's difference with both of its intervals on one line, then one verdict: the one for
    new test images, which is the wider claim, and the one on this test set only where it decides
    otherwise; then what the spreads behind them are."""
    lines = [f"{title} (each seed's pair shares its base, batch order and adapter init), test accuracy points:"]
    for name, c in comparisons.items():
        first_rank, second_rank = c["ranks"].values()
        ranks = "" if first_rank == second_rank or None in (first_rank, second_rank) else \
            f" [ranks {first_rank} and {second_rank}: not a like-for-like pair]"
        images = c.get("new_test_images")
        intervals = f"{interval_label(c)} {bracket(c['ci'])} on this test set" + (
            f", {bracket(images['ci'])} for new test images" if images else "")
        lines.append(f"  {name}{ranks}: {c['mean']:+.2f} over {c['n']} seeds; {intervals}")
        if images is None:
            lines.append(arrow(c["verdict"]))
            lines.append(aside(f"(std {c['std']:.2f} points between seeds: {INTERVALS_EXPLAINED})"))
            continue
        lines.append(arrow(images["verdict"]))
        if short_verdict(c["ci"], c["margin"]) != short_verdict(images["ci"], c["margin"]):
            lines.append(arrow(f"On this test set alone: {c['verdict']}"))
        lines.append(aside(f"(std {c['std']:.2f} points between seeds; the new-image interval adds how differently "
                           f"the two fare image by image, std {images['image_std']:.2f} over {images['n_images']:,} "
                           f"images: {INTERVALS_EXPLAINED})"))
    return "\n".join(lines)


def bracket(interval: list[float]) -> str:
    return f"[{interval[0]:+.2f}, {interval[1]:+.2f}]"


def interval_label(comparison: dict) -> str:
    return f"{100 * comparison.get('confidence', 0.95):.4g}% CI"


def arrow(sentence: str) -> str:
    # not at hyphens: "Bonferroni-adjusted" stays one word, so the sentence can be found in the output
    return textwrap.fill(sentence, width=100, initial_indent="  -> ", subsequent_indent="     ",
                         break_on_hyphens=False)


def aside(sentence: str) -> str:
    """A note under a verdict, indented as the verdict's own lines."""
    return textwrap.fill(sentence, width=100, initial_indent="     ", subsequent_indent="     ",
                         break_on_hyphens=False)


def several_intervals(comparisons: dict) -> str:
    """One sentence for a sweep's intervals, which are Bonferroni-adjusted: together they hold at 95%."""
    ranked = {name: c for name, c in comparisons.items() if c["rates"] == "tuned"}
    excluding = [name for name, c in ranked.items() if c["excludes_zero"]]
    n, first = len(ranked), next(iter(ranked.values()))
    adjusted = (f"each interval at {100 * first['confidence']:.4g}% (Bonferroni over {n} ranks), so that the {n} "
                f"hold together at 95%") if n > 1 else "one rank, a plain 95% interval"
    if not excluding:
        return f"none of the {n} intervals excludes zero ({adjusted}): at no rank can {first['n']} seeds tell " \
               f"DoRA from LoRA."
    return f"{len(excluding)} of {n} intervals exclude zero ({', '.join(excluding)}; {adjusted})."


def rank_rows(summary: dict) -> list[tuple[str, ...]]:
    """One row per rank: each adapter's parameters and accuracy, and DoRA - LoRA."""
    methods, comparisons = summary["methods"], summary["comparisons"]
    by_rank = {}
    for name, result in methods.items():
        if result.method in ("lora", "dora") and result.rates == "tuned":  # not the shared-rate runs
            by_rank.setdefault(result.rank, {})[result.method] = (name, result)
    level = next((interval_label(c) for c in comparisons.values()), "95% CI")
    header = ("rank", "lora params", "lora accuracy", "dora params", "dora accuracy",
              f"dora - lora, paired [{level}], this test set", "new test images")
    rows = [header]
    for rank in sorted(by_rank):
        cells = [str(rank)]
        for method in ("lora", "dora"):
            name, result = by_rank[rank].get(method, (None, None))
            cells += [f"{result.trainable_params:,}", accuracy_cell(result)] if result else ["-", "-"]
        pair = f"{by_rank[rank]['dora'][0]} - {by_rank[rank]['lora'][0]}" if len(by_rank[rank]) == 2 else None
        c = comparisons.get(pair)
        cells.append(f"{c['mean']:+.2f} {bracket(c['ci'])}" if c else "-")
        images = c.get("new_test_images") if c else None
        cells.append(bracket(images['ci']) if images else "-")
        rows.append(tuple(cells))
    return rows


def accuracy_cell(result: MethodResult | OverSeeds) -> str:
    if result.test_accuracy is None:
        return "diverged"
    std = accuracy_std(result)
    return f"{result.test_accuracy:.2f}%" if std is None else f"{result.test_accuracy:.2f} ± {std:.2f}%"


def format_decomposition(decomposition: dict) -> str:
    """The line of dM on dD per method (DoRA paper section 3.2, figure 2), and the correlation
    within each layer, named."""
    layers = list(dict.fromkeys(layer for line in decomposition.values() for layer in line["per_layer"]))
    header = ("method", "points", "slope of dM on dD", "r", "slope per seed", "mean over seeds [95% CI]",
              *(f"r in {layer}" for layer in layers))
    rows = [header]
    for name, line in decomposition.items():
        per_seed = " ".join(signed(s) for s in line["per_seed_slopes"])
        over = line.get("slope_over_seeds")
        mean = f"{over['mean']:+.2f} {bracket(over['ci95'])}" if over else "-"
        per_layer = [signed(line["per_layer"][layer]["correlation"]) if layer in line["per_layer"] else "-"
                     for layer in layers]
        rows.append((name, str(line["n"]), f"{line['slope']:+.3f}", signed(line["correlation"]), per_seed, mean,
                     *per_layer))
    return ("Weight decomposition (DoRA paper sec. 3.2): dM = mean |change of row norm|, dD = mean "
            "(1 - cos) of rows,\nagainst the pretrained weight; a point is one layer at one measured step "
            "of one seed,\nr Pearson's correlation:\n" + align(rows))


def signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"
