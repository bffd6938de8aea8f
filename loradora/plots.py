"""The figures of a run, drawn from the files it wrote (metrics.jsonl, summary.json):

    loss_curves.png       every run: per-batch training loss per phase, the mean over seeds
    accuracy_vs_rank.png  a rank sweep (experiment.ranks): accuracy per rank, and DoRA - LoRA per rank
    dm_dd.png             with the analysis on: dM against dD per method, each layer with its own line
    rate_sensitivity.png  with a rate grid (experiment.lrs): validation accuracy by rate, and DoRA - LoRA at each

A figure that does not apply to a run is not written. matplotlib's ``Figure`` is used directly, not
pyplot, so no window or global backend is involved: ``savefig`` renders a PNG with Agg, written
atomically (loradora/files.py). Legends sit outside the axes, so they never cover a point; panels
that are compared share their scales.

    python -m loradora.plots results/<run>     # draws a finished run's figures again
"""

import io
import math
import json
import sys
from collections import defaultdict
from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter, NullLocator

from loradora.choices import ADAPTER_METHODS
from loradora.files import WriteFailed, write_atomic
from loradora.results import accuracy_std, from_json
from loradora.stats import Line, fit_line

LAYER_MARKERS = "osD^v<>p"
REFERENCE_LABELS = {"full": "full (every weight)", "head": "head (last layer)",
                    "no_finetune": "no_finetune (base, not tuned)", "pretrained": "pretrained (base)"}
LINE_STYLES = ("-", (0, (5, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)))


def write_plots(run_dir: Path) -> list[Path]:
    """Draw every figure that applies to the run in ``run_dir``; returns the files written."""
    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    curves = loss_curves(run_dir / "metrics.jsonl")
    epochs = epoch_starts(run_dir / "metrics.jsonl")
    written = []
    for name, draw, applies in [
        ("loss_curves.png", lambda: draw_loss_curves(curves, summary, epochs), bool(curves)),
        ("accuracy_vs_rank.png", lambda: draw_accuracy_vs_rank(summary), is_rank_sweep(summary)),
        ("dm_dd.png", lambda: draw_dm_dd(summary), bool(summary["decomposition"])),
        ("rate_sensitivity.png", lambda: draw_rate_sensitivity(summary), has_rate_sensitivity(summary)),
    ]:
        if applies:
            save_figure(draw(), run_dir / name)
            written.append(run_dir / name)
    return written


def save_figure(figure: Figure, path: Path) -> None:
    """``figure`` as a PNG at ``path``, written atomically: a failed write leaves no half figure."""
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=120)
    write_atomic(path, png.getvalue())


def load_summary(run_dir: Path) -> dict:
    """summary.json, its methods read back as the records they were written from."""
    return with_records(json.loads((run_dir / "summary.json").read_text()))


def with_records(summary: dict) -> dict:
    """``summary`` (as JSON gives it) with its methods as results records; ValueError if they are not."""
    return {**summary, "methods": {name: from_json(entry) for name, entry in summary["methods"].items()}}


def is_rank_sweep(summary: dict) -> bool:
    """At least two ranks of an adapter from experiment.ranks (not merely lora.rank != dora.rank)."""
    swept = {result.rank for result in summary["methods"].values() if result.rank is not None}
    return bool(summary["config"]["experiment"]["ranks"]) and len(swept) >= 2


def loss_curves(metrics_path: Path) -> dict[str, list[list[float]]]:
    """Per phase, each seed's per-batch losses over all its epochs, from the epoch records."""
    per_seed = defaultdict(lambda: defaultdict(list))
    for line in metrics_path.read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "epoch" and "batch_losses" in record and not record.get("tuning"):
            per_seed[record["phase"]][record.get("seed")].extend(record["batch_losses"])
    return {phase: list(seeds.values()) for phase, seeds in per_seed.items()}


def epoch_starts(metrics_path: Path) -> dict[str, list[int]]:
    """Per phase, the step at which each epoch after the first begins (its first seed's epochs: the
    seeds of a phase train alike), for the loss curves' epoch marks."""
    lengths: dict[str, dict] = defaultdict(lambda: defaultdict(list))
    for line in metrics_path.read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "epoch" and "batch_losses" in record and not record.get("tuning"):
            lengths[record["phase"]][record.get("seed")].append(len(record["batch_losses"]))
    starts = {}
    for phase, seeds in lengths.items():
        first = next(iter(seeds.values()))
        starts[phase] = [1 + sum(first[:k]) for k in range(1, len(first))]
    return starts


def run_caption(summary: dict) -> str:
    """What a figure's run was: each adapter's rank, alpha and rate, and the seeds, so that two runs'
    figures can be told apart (a rank sweep gives its ranks)."""
    adapters = {}
    for result in summary["methods"].values():
        if result.method in ("lora", "dora") and result.rates != "shared":
            adapters.setdefault(result.method, []).append(result)
    parts = []
    for method, results in adapters.items():
        ranks = sorted({r.rank for r in results})
        rank = f"r={ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"
        rates = sorted({r.lr for r in results if r.lr is not None})
        rate = f" lr={rates[0]:g}" if len(rates) == 1 else f" lr {rates[0]:g} to {rates[-1]:g}" if rates else ""
        alpha = f" α={results[0].alpha:g}" if results[0].alpha is not None else ""
        parts.append(f"{method} {rank}{alpha}{rate}")
    seeds = summary["seeds"]
    parts.append(f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
                 if len(seeds) <= 6 else f"{len(seeds)} seeds, {seeds[0]} to {seeds[-1]}")
    return " · ".join(parts)


def enough_ticks(axis) -> None:
    """At least 3 labelled ticks on a log axis at any range (call once its data are drawn): a decade
    or more keeps matplotlib's powers of ten, labelled at 1, 2 and 5 within fewer than 3 decades; a
    narrower range (a fine-tuning loss from 0.15 to 0.7 showed only 10^0) gets plain, evenly spaced
    numbers instead, as a linear axis would."""
    low, high = sorted(axis.get_view_interval())
    if axis.get_scale() != "log" or low <= 0:
        return
    decades = math.log10(high / low)
    if decades >= 3:
        return
    if decades >= 1:
        from matplotlib.ticker import LogLocator
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    else:
        axis.set_major_locator(MaxNLocator(nbins=5, min_n_ticks=3))
    axis.set_major_formatter("{x:.3g}")
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def rank_ticks(ranks: list[int]) -> list[int]:
    """The ranks as ticks, with a power of two more on either side (none below 1) until there are 3."""
    ticks = sorted(set(ranks))
    while len(ticks) < 3:
        ticks = [ticks[0] // 2, *ticks] if len(ticks) % 2 and ticks[0] >= 2 else [*ticks, ticks[-1] * 2]
    return ticks


def mean_over_seeds(curves: list[list[float]]) -> list[float]:
    return [sum(values) / len(values) for values in zip(*curves)]


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` values, so the smoothed curve starts at the first batch."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def loss_panels(summary: dict, phases: list[str]) -> dict[str, list[str]]:
    """Which phases share a panel: pretraining alone; fine-tuning together, or, in a rank sweep, one
    panel per adapter (a line per rank) and one for the baselines."""
    methods = summary["methods"]
    sweep = bool(summary["config"]["experiment"]["ranks"])
    panels = defaultdict(list)
    for phase in phases:
        method = methods[phase].method if phase in methods else None
        if phase == "pretrained":
            panels["pretraining (all weights)"].append(phase)
        elif not sweep:
            panels["fine-tuning"].append(phase)
        elif method in ADAPTER_METHODS:
            panels[f"fine-tuning: {method} by rank"].append(phase)
        else:
            panels["fine-tuning: baselines"].append(phase)
    return panels


def panel_grid(n_panels: int, max_cols: int, panel_size: tuple[float, float], **share) -> tuple[Figure, list]:
    """A figure with ``n_panels`` axes in one row of up to ``max_cols``, else two columns; ``share``
    is sharex/sharey for figure.subplots."""
    n_cols = n_panels if n_panels <= max_cols else 2
    n_rows = -(-n_panels // n_cols)
    width, height = panel_size
    figure = Figure(figsize=(width * n_cols, height * n_rows + 0.4), layout="constrained")
    axes = list(figure.subplots(n_rows, n_cols, squeeze=False, **share).flat)
    for unused in axes[n_panels:]:
        unused.set_visible(False)
    return figure, axes[:n_panels]


def draw_loss_curves(curves: dict, summary: dict, epochs: dict[str, list[int]] | None = None) -> Figure:
    """Per panel, each phase's mean loss over seeds, smoothed, and a dotted line where an epoch
    begins (``epochs``, epoch_starts)."""
    panels = loss_panels(summary, list(curves))
    n_seeds = len(summary["seeds"])
    # One y-scale for every panel: pretraining's loss and each fine-tuning's are read against each other.
    figure, axes = panel_grid(len(panels), max_cols=2, panel_size=(8.0, 4.6), sharey=True)
    for ax, (title, phases) in zip(axes, panels.items()):
        by_rank = title.endswith("by rank")
        colors = sequential_colors(len(phases)) if by_rank else [f"C{k}" for k in range(len(phases))]
        for k, (phase, color) in enumerate(zip(phases, colors)):
            mean = mean_over_seeds(curves[phase])
            steps = range(1, len(mean) + 1)
            if len(phases) <= 4:  # more faint lines than that blur into one band
                ax.plot(steps, mean, color=color, alpha=0.12, linewidth=0.5)
            # Dash patterns keep a curve visible where it runs on top of another; a rank sweep's
            # curves are told apart by their colour, dark (low rank) to light (high rank).
            ax.plot(steps, moving_average(mean, max(1, len(mean) // 40)), color=color, linewidth=1.6,
                    label=phase, linestyle="-" if by_rank else LINE_STYLES[k % len(LINE_STYLES)])
        for start in sorted({step for phase in phases for step in (epochs or {}).get(phase, [])}):
            ax.axvline(start, color="grey", linestyle=":", linewidth=0.9, gid="epoch start")
        ax.set_yscale("log")
        ax.set_title(title + (" (dotted: an epoch begins)" if any((epochs or {}).get(p) for p in phases) else ""))
        ax.set_xlabel("optimiser step (batch of the training run)")
        ax.set_ylabel("training-batch cross-entropy loss (log scale)")
        ax.yaxis.set_tick_params(labelleft=True)  # sharey hides them on the right-hand panels
        ax.grid(True, which="both", alpha=0.3)
        legend_outside(ax, ncols=2 if len(phases) > 8 else 1)
    for ax in axes:
        enough_ticks(ax.yaxis)  # the panels share one y-axis: set once all are drawn
    seeds = f"mean over {n_seeds} seeds" if n_seeds > 1 else f"seed {summary['seeds'][0]}"
    figure.suptitle(f"Per-batch training loss ({seeds}); bold: trailing mean over 1/40 of the run"
                    f"{', faint: every batch' if any(len(p) <= 4 for p in panels.values()) else ''}\n"
                    f"{run_caption(summary)}")
    return figure


def legend_outside(ax, **options) -> None:
    """The legend to the right of the axes, where it cannot cover a point; constrained layout
    makes room for it."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, fontsize="small", **options)


def sequential_colors(n: int) -> list:
    """Colours for ordered lines (ranks): dark to light along viridis, stopping short of pale yellow."""
    return [colormaps["viridis"](0.85 * i / max(1, n - 1)) for i in range(n)]


def draw_accuracy_vs_rank(summary: dict) -> Figure:
    methods, comparisons = summary["methods"], summary["comparisons"]
    n_seeds = len(summary["seeds"])
    with_differences = bool(comparisons)
    figure = Figure(figsize=(14 if with_differences else 8.5, 4.8), layout="constrained")
    axes = figure.subplots(1, 2 if with_differences else 1, squeeze=False)[0]

    ax = axes[0]
    for i, method in enumerate(("lora", "dora")):
        entries = sorted(((r.rank, r) for r in methods.values() if r.method == method), key=lambda entry: entry[0])
        if not entries:
            continue
        ranks = [rank for rank, _ in entries]
        offset = 1.04 if i else 1 / 1.04  # side by side, so the error bars do not hide each other
        # Own marker and dash pattern each, half see-through: where DoRA's line runs over LoRA's,
        # both stay visible.
        ax.errorbar([rank * offset for rank in ranks], [r.test_accuracy for _, r in entries],
                    yerr=[accuracy_std(r) or 0.0 for _, r in entries], marker="os"[i], capsize=3,
                    label=f"{method}", color=f"C{i}", linestyle=LINE_STYLES[i], alpha=0.8)
    for j, name in enumerate(("full", "head", "no_finetune", "pretrained")):
        if name not in methods or (name == "pretrained" and "no_finetune" in methods):
            continue  # the pretrained base on a shifted task is no_finetune; on MNIST it is pretrained
        result, color = methods[name], f"C{j + 2}"
        ax.axhline(result.test_accuracy, color=color, linestyle="--", label=REFERENCE_LABELS[name])
        if std := accuracy_std(result):
            ax.axhspan(result.test_accuracy - std, result.test_accuracy + std, color=color, alpha=0.12)
    ax.set_xscale("log", base=2)
    ax.set_xticks(rank_ticks([r.rank for r in methods.values() if r.rank is not None]))
    ax.get_xaxis().set_major_formatter("{x:g}")
    ax.set_xlabel("adapter rank r")
    ax.set_ylabel("test accuracy (%)")
    bars = f"mean ± std over {n_seeds} seeds" if n_seeds > 1 else "one seed, no error bars"
    ax.set_title(f"Test accuracy by rank ({bars})")
    ax.grid(True, alpha=0.3)
    legend_outside(ax)

    if with_differences:
        ax = axes[1]
        rows = sorted(((c["ranks"]["dora"], c) for c in comparisons.values()
                       if c["rates"] == "tuned"), key=lambda row: row[0])  # the shared-rate runs are another family
        ranks = [rank for rank, _ in rows]
        means = [c["mean"] for _, c in rows]
        # the interval the verdict reads: Bonferroni-widened when several ranks are compared
        errors = [[c["mean"] - c["ci"][0] for _, c in rows], [c["ci"][1] - c["mean"] for _, c in rows]]
        level = f"{100 * rows[0][1]['confidence']:.4g}%"
        adjusted = f", Bonferroni over {len(rows)} ranks" if len(rows) > 1 else ""
        ax.errorbar(ranks, means, yerr=errors, marker="o", capsize=3, color="C1", label="dora - lora")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(rank_ticks(ranks))
        ax.get_xaxis().set_major_formatter("{x:g}")
        ax.set_xlabel("adapter rank r")
        ax.set_ylabel("DoRA - LoRA test accuracy (points)")
        ax.set_title(f"Paired difference by seed ({n_seeds} seeds)\n{level} t interval{adjusted}")
        ax.grid(True, alpha=0.3)
    figure.suptitle(run_caption(summary))
    return figure


def has_rate_sensitivity(summary: dict) -> bool:
    return any(row is not None for rows in (summary.get("rate_sensitivity") or {}).values() for row in rows.values())


def draw_rate_sensitivity(summary: dict) -> Figure:
    """Left: each adapter's mean validation accuracy at every rate it trained at. Right: DoRA - LoRA
    there, paired by tuning seed, with each rate's own 95% interval: a flatter DoRA shows as a
    difference that grows away from the best rate (the paper's stability claim, read on the rate)."""
    sensitivity = summary["rate_sensitivity"]
    n_seeds = len(next(iter(summary["tuning"].values()))["seeds"])
    figure = Figure(figsize=(14, 4.8), layout="constrained")
    left, right = figure.subplots(1, 2)
    colors = sequential_colors(len(sensitivity))
    for color, (pair, by_rate) in zip(colors, sensitivity.items()):
        rows = [(float(rate), row) for rate, row in by_rate.items() if row is not None]
        rates = [rate for rate, _ in rows]
        for method, style in (("lora", LINE_STYLES[1]), ("dora", LINE_STYLES[0])):
            left.plot(rates, [row[method] for _, row in rows], marker="os"[method == "dora"], color=color,
                      linestyle=style, label=f"{pair.split(' - ')[method == 'lora']}")
        errors = [[row["mean"] - row["ci95"][0] for _, row in rows], [row["ci95"][1] - row["mean"] for _, row in rows]]
        right.errorbar(rates, [row["mean"] for _, row in rows], yerr=errors, marker="o", capsize=3, color=color,
                       label=pair, alpha=0.85)
    right.axhline(0, color="black", linewidth=0.8)
    for ax, ylabel, title in [
            (left, "validation accuracy (%)", f"Validation accuracy by rate (mean of {n_seeds} tuning seeds)"),
            (right, "DoRA - LoRA (points)", "DoRA - LoRA by rate, paired by seed\n95% t interval each, unadjusted")]:
        ax.set_xscale("log")
        enough_ticks(ax.xaxis)
        ax.set_xlabel("learning rate")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        legend_outside(ax)
    figure.suptitle(run_caption(summary))
    return figure


VERDICT_MARKS = {"dora": "DoRA ahead", "lora": "LoRA ahead", "tie": "tie", "undecided": "undecided"}


def draw_map(answers: list, margin: float, family: int | None = None) -> Figure:
    """The regime map (regime_map.py): one panel per angle, fine-tuning set size by rank, each cell
    coloured by DoRA - LoRA (red: DoRA ahead, blue: LoRA ahead, on one scale for every panel) and
    labelled with its mean, its interval for new test images adjusted for the whole map, and the
    verdict that interval gives."""
    angles = list(dict.fromkeys(a.rotate_degrees for a in answers))
    sizes = sorted({a.n_train for a in answers})
    ranks = sorted({a.rank for a in answers})
    scale = max(max(abs(a.new_images["mean"]) for a in answers), margin)
    figure = Figure(figsize=(1.9 * len(ranks) * len(angles) + 2, 1.0 * len(sizes) + 2.2), layout="constrained")
    axes = figure.subplots(1, len(angles), squeeze=False, sharey=True)[0]
    for ax, angle in zip(axes, angles):
        grid = [[float("nan")] * len(ranks) for _ in sizes]
        for a in answers:
            if a.rotate_degrees == angle:
                row, column = sizes.index(a.n_train), ranks.index(a.rank)
                grid[row][column] = a.new_images["mean"]
                low, high = a.new_images["ci"]
                dark = abs(a.new_images["mean"]) > 0.6 * scale  # white on the deep colours
                ax.text(column, row, f"{a.new_images['mean']:+.2f}\n[{low:+.2f}, {high:+.2f}]\n{VERDICT_MARKS[a.verdict]}",
                        ha="center", va="center", fontsize=7, color="white" if dark else "black")
        image = ax.imshow(grid, cmap="RdBu_r", vmin=-scale, vmax=scale, aspect="auto", origin="lower")
        ax.set_xticks(range(len(ranks)), [str(rank) for rank in ranks])
        ax.set_yticks(range(len(sizes)), [f"{size:,}" for size in sizes])
        ax.set_xlabel("adapter rank")
        ax.set_title(f"rotated {angle:g}°")
    axes[0].set_ylabel("fine-tuning images")
    figure.colorbar(image, ax=list(axes), label="DoRA − LoRA, test accuracy points")
    figure.suptitle(f"DoRA − LoRA by cell: mean, interval for new test images (Bonferroni over {family or len(answers)}), "
                    f"verdict (tie: the interval inside ±{margin:g}, TOST at its level)", fontsize=10)
    return figure


def draw_dm_dd(summary: dict) -> Figure:
    """The DoRA paper's figure 2 for this run: one panel per method, a marker per layer, and each
    layer's own least-squares line in its colour. Layers move on different scales, so a line pooled
    over them can slope unlike every layer's own (Simpson's paradox): it is drawn only thin, dashed
    and grey, for the pooled slope that summary.json reports."""
    fits = summary["decomposition"]
    # The methods are compared by where their points lie, so every panel has the same axes.
    figure, axes = panel_grid(len(fits), max_cols=3, panel_size=(5.2, 6.6), sharex=True, sharey=True)
    for ax, (name, line) in zip(axes, fits.items()):
        points = [point for run in summary["runs"] if name in run["decomposition"]  # not where it diverged
                  for point in run["decomposition"][name]["points"]]
        shapes = summary["runs"][0]["decomposition"][name]["layers"]
        own = layer_lines(points, line.get("per_layer", {}))
        for k, (layer, (n_out, n_in)) in enumerate(shapes.items()):
            mine = [point for point in points if point["layer"] == layer]
            xs = [p["dD"] for p in mine]
            ax.scatter(xs, [p["dM"] for p in mine], s=14, alpha=0.7,
                       marker=LAYER_MARKERS[k % len(LAYER_MARKERS)], color=f"C{k}",
                       label=f"{layer}: {n_in}→{n_out}")
            if layer in own:
                fit, reported = own[layer]
                ends = [min(xs), max(xs)]
                ax.plot(ends, [fit.slope * x + fit.intercept for x in ends], color=f"C{k}", linewidth=1.6,
                        label=f"{layer}, own line: slope {reported['slope']:+.3f}, r {signed(reported['correlation'])}")
        ends = [min(p["dD"] for p in points), max(p["dD"] for p in points)]
        ax.plot(ends, [line["slope"] * x + line["intercept"] for x in ends], color="grey", linewidth=0.8,
                linestyle="--", zorder=1.5,
                label=f"pooled over layers (mixes scales): slope {line['slope']:+.3f}, r {signed(line['correlation'])}")
        ax.set_title(f"{name}: {len(points)} points")
        ax.set_xlabel("ΔD: mean (1 − cos) of rows vs. W0 (direction)")
        ax.set_ylabel("ΔM: mean |Δ row norm| vs. W0 (magnitude)")
        ax.xaxis.set_major_formatter("{x:.3g}")  # plain numbers: an offset label would collide with the axis label
        ax.yaxis.set_major_formatter("{x:.3g}")
        ax.xaxis.set_tick_params(labelbottom=True)  # sharex/sharey hide them on inner panels
        ax.yaxis.set_tick_params(labelleft=True)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize="small")  # below: panels sit side by side
    seeds = len(summary["seeds"])
    figure.suptitle(f"Magnitude vs. direction change of the effective weights during fine-tuning "
                    f"(every measured step{f', {seeds} seeds' if seeds > 1 else ''});\n"
                    f"solid: least squares within each layer; dashed grey: over all layers at once\n"
                    f"{run_caption(summary)}")
    return figure


def layer_lines(points: list[dict], per_layer: dict) -> dict[str, tuple[Line, dict]]:
    """Per layer that summary.json gives a line (``per_layer``: slope, correlation, n), that line
    fitted again from the layer's points, for the intercept the summary does not keep, beside the
    summary's entry; a layer whose points give no line (under 2, or one dD) is left out."""
    lines = {}
    for layer, reported in per_layer.items():
        mine = [point for point in points if point["layer"] == layer]
        try:
            lines[layer] = (fit_line([p["dD"] for p in mine], [p["dM"] for p in mine]), reported)
        except ValueError:
            continue
    return lines


def signed(value: float | None) -> str:
    """A correlation for a label: +0.97, or "undefined" where y did not vary."""
    return "undefined" if value is None else f"{value:+.2f}"


USAGE = "usage: python -m loradora.plots RUN_FOLDER   (a finished run: results/<run_name>/)"


def main(argv: list[str]) -> int:
    """Draw a finished run's figures again; 2 with one line (usage or why) when it cannot, 1 when a
    figure cannot be written."""
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    problem = unfinished(run_dir)
    if problem:
        print(f"error: {run_dir}: {problem}", file=sys.stderr)
        return 2
    try:
        for path in write_plots(run_dir):
            print(path)
    except WriteFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def unfinished(run_dir: Path) -> str | None:
    """Why ``run_dir`` is not a finished run's folder, or None when it is one."""
    if not run_dir.is_dir():
        return "no such folder" if not run_dir.exists() else "not a folder"
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except FileNotFoundError:
        return "no summary.json: not a run folder, or a run that stopped before its first phase"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"summary.json cannot be read: {error}"
    status = summary.get("status") if isinstance(summary, dict) else None
    if status != "complete":
        return f"the run did not finish (status: {status}); only a complete run's figures are drawn"
    if not (run_dir / "metrics.jsonl").is_file():
        return "no metrics.jsonl"
    try:
        with_records(summary)
    except (ValueError, TypeError, AttributeError) as error:
        return f"summary.json: {error}; rerun it with this version"
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
