"""The figures, drawn from a small finished run written by hand, and the plots command's refusals."""

import dataclasses
import json
import math

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb

from loradora import plots
from loradora.files import write_json
from loradora.results import OverSeeds, aggregate_method
from helpers import method_result

METHODS = ("pretrained", "lora", "dora")


def finished_run(run_dir, status="complete"):
    """The files of a one-seed run of pretrained, lora and dora, with the dM/dD analysis on: two
    layers with a line each (of slopes 20 and 5, pooled 10 or -3), and for dora a third layer of
    one point, too few for a line."""
    run_dir.mkdir()
    # Losses of very different scales: pretraining starts at ln(10), fine-tuning is 100x lower.
    records = [{"phase": phase, "seed": 1, "kind": "epoch",
                "batch_losses": [scale * math.exp(-i / 50) for i in range(200)]}
               for phase, scale in zip(METHODS, (2.3, 0.02, 0.021))]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    layers = {"layers.0": [128, 784], "layers.2": [256, 128]}
    points = {name: [{"layer": layer, "dD": k * 0.001 * (1 + j), "dM": k * 0.01 * (2 - j)}
                     for k in range(1, 6) for j, layer in enumerate(layers)] for name in ("lora", "dora")}
    points["dora"].append({"layer": "layers.4", "dD": 0.002, "dM": 0.03})
    per_layer = {"layers.0": {"slope": 20.0, "correlation": 1.0, "n": 5},
                 "layers.2": {"slope": 5.0, "correlation": 1.0, "n": 5}}
    summary = {
        "status": status, "seeds": [1], "comparisons": {},
        "config": {"experiment": {"ranks": None}, "finetune": {"task": "same"}},
        "methods": {"pretrained": method_result(test_accuracy=95.0),
                    "lora": method_result(method="lora", rank=4, test_accuracy=97.0),
                    "dora": method_result(method="dora", rank=4, test_accuracy=97.1)},
        "decomposition": {"lora": {"slope": 10.0, "intercept": 0.0, "correlation": 0.9, "per_layer": per_layer},
                          "dora": {"slope": -3.0, "intercept": 0.05, "correlation": -0.5, "per_layer": per_layer}},
        "runs": [{"seed": 1, "decomposition": {
            "lora": {"points": points["lora"], "layers": layers},
            "dora": {"points": points["dora"], "layers": {**layers, "layers.4": [10, 256]}}}}],
    }
    write_json(run_dir / "summary.json", summary)
    return run_dir


def written_by_an_older_version(run_dir):
    """Its summary.json as the code before the typed records wrote it: no file_checks field."""
    summary = json.loads((run_dir / "summary.json").read_text())
    for entry in summary["methods"].values():
        del entry["file_checks"]
    write_json(run_dir / "summary.json", summary)


def over_seeds(**fields) -> OverSeeds:
    """Three seeds' aggregate of ``method_result(**fields)``, with its std."""
    std = fields.pop("test_accuracy_std")
    result = aggregate_method([method_result(**fields)] * 3)
    return dataclasses.replace(result, test_accuracy_std=std)


def drawn(figure):
    FigureCanvasAgg(figure).draw()
    return [ax for ax in figure.axes if ax.get_visible()]


def legends_clear_of_the_data(axes) -> bool:
    return all(not ax.get_legend().get_window_extent().overlaps(ax.get_window_extent()) for ax in axes)


def test_write_plots_draws_the_figures_that_apply(tmp_path):
    run = finished_run(tmp_path / "run")
    assert plots.write_plots(run) == [run / "loss_curves.png", run / "dm_dd.png"]
    assert all((run / name).read_bytes().startswith(b"\x89PNG") for name in ("loss_curves.png", "dm_dd.png"))


def test_loss_panels_share_a_y_scale_and_keep_their_legends_outside(tmp_path):
    run = finished_run(tmp_path / "run")
    summary = plots.load_summary(run)
    axes = drawn(plots.draw_loss_curves(plots.loss_curves(run / "metrics.jsonl"), summary))
    assert len(axes) == 2 and axes[0].get_ylim() == axes[1].get_ylim()
    assert legends_clear_of_the_data(axes)
    lora, dora = axes[1].get_lines()[1::2]  # faint every-batch line, then the bold trailing mean
    assert lora.get_linestyle() != dora.get_linestyle()  # DoRA drawn over LoRA leaves LoRA visible


def test_dm_dd_panels_share_both_scales_and_keep_their_legends_outside(tmp_path):
    summary = plots.load_summary(finished_run(tmp_path / "run"))
    axes = drawn(plots.draw_dm_dd(summary))
    assert len(axes) == 2
    assert axes[0].get_xlim() == axes[1].get_xlim() and axes[0].get_ylim() == axes[1].get_ylim()
    assert legends_clear_of_the_data(axes)


def own_lines(ax) -> dict[str, object]:
    """The panel's per-layer lines, by layer: each labelled "<layer>, own line: ..."."""
    return {line.get_label().split(",")[0]: line for line in ax.get_lines() if ", own line:" in line.get_label()}


def test_every_layer_with_a_line_gets_its_own_in_its_colour_and_the_pooled_one_stays_grey(tmp_path):
    summary = plots.load_summary(finished_run(tmp_path / "run"))
    for ax, (name, fit) in zip(drawn(plots.draw_dm_dd(summary)), summary["decomposition"].items()):
        lines = own_lines(ax)
        assert set(lines) == set(fit["per_layer"]) == {"layers.0", "layers.2"}  # layers.4 has no line
        markers = {collection.get_label().split(":")[0]: collection for collection in ax.collections}
        for layer, line in lines.items():
            (x0, y0), (x1, y1) = line.get_xydata()
            assert (y1 - y0) / (x1 - x0) == pytest.approx(fit["per_layer"][layer]["slope"])  # through its own points
            assert f"slope {fit['per_layer'][layer]['slope']:+.3f}, r +1.00" in line.get_label()
            assert to_rgb(line.get_color()) == pytest.approx(tuple(markers[layer].get_facecolor()[0][:3]))
        pooled = [line for line in ax.get_lines() if line.get_label().startswith("pooled over layers (mixes scales)")]
        assert len(pooled) == 1 and pooled[0].get_color() == "grey" and pooled[0].get_linestyle() == "--"
        assert len(ax.get_lines()) == len(lines) + 1


def test_a_layer_whose_points_give_no_line_is_left_without_one():
    points = [{"layer": "a", "dD": 0.1, "dM": 0.2}, {"layer": "a", "dD": 0.1, "dM": 0.3},  # one dD
              {"layer": "b", "dD": 0.1, "dM": 0.2},  # one point
              {"layer": "c", "dD": 0.1, "dM": 0.2}, {"layer": "c", "dD": 0.3, "dM": 0.6}]
    reported = {layer: {"slope": 2.0, "correlation": 1.0, "n": 2} for layer in "abc"}
    lines = plots.layer_lines(points, reported)
    assert list(lines) == ["c"] and lines["c"][0].slope == pytest.approx(2.0) and lines["c"][0].intercept == pytest.approx(0.0)


def test_the_plots_command_redraws_a_finished_run(tmp_path, capsys):
    run = finished_run(tmp_path / "run")
    assert plots.main([str(run)]) == 0
    assert capsys.readouterr().out.split() == [str(run / "loss_curves.png"), str(run / "dm_dd.png")]


@pytest.mark.parametrize("argv", [[], ["a", "b"], ["--help"]])
def test_the_plots_command_without_one_folder_prints_its_usage(argv, capsys):
    assert plots.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m loradora.plots") and err.count("\n") == 1


def folder_with_summary(content: bytes):
    """A maker of a folder whose summary.json holds ``content``."""
    def make(path):
        path.mkdir()
        (path / "summary.json").write_bytes(content)
    return make


def without_metrics(path):
    finished_run(path)
    (path / "metrics.jsonl").unlink()


@pytest.mark.parametrize("make,message", [
    (lambda path: None, "no such folder"),
    (lambda path: path.write_text("x"), "not a folder"),
    (lambda path: path.mkdir(), "no summary.json"),
    (folder_with_summary(b"{"), "summary.json cannot be read"),
    (folder_with_summary(b"\xff"), "summary.json cannot be read"),
    (folder_with_summary(b"[]"), "status: None"),
    (lambda path: finished_run(path, status="failed"), "the run did not finish (status: failed)"),
    (lambda path: finished_run(path, status="interrupted"), "status: interrupted"),
    (lambda path: finished_run(path, status="running"), "status: running"),
    (without_metrics, "no metrics.jsonl"),
    (lambda path: written_by_an_older_version(finished_run(path)), "not this version's MethodResult records"),
])
def test_the_plots_command_refuses_what_is_not_a_finished_run_in_one_line(tmp_path, capsys, make, message):
    path = tmp_path / "run"
    make(path)
    assert plots.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "loss_curves.png").exists()


def test_accuracy_by_rank_keeps_its_legend_outside_and_the_adapters_apart():
    methods = {f"{method}_r{rank}": over_seeds(method=method, rank=rank, test_accuracy=97.0 + rank / 10,
                                               test_accuracy_std=0.1)
               for method in ("lora", "dora") for rank in (1, 2, 4)}
    methods |= {"full": over_seeds(method="full", test_accuracy=96.8, test_accuracy_std=0.3),
                "head": over_seeds(method="head", test_accuracy=97.2, test_accuracy_std=None)}
    summary = {"methods": methods, "seeds": [1, 2, 3], "config": {"experiment": {"ranks": [1, 2, 4]}},
               "comparisons": {f"dora_r{rank} - lora_r{rank}": {"mean": 0.05, "ci95": [-0.1, 0.2], "ci": [-0.15, 0.25],
                                                                "confidence": 1 - 0.05 / 3, "rates": "tuned",
                                                                "ranks": {"dora": rank, "lora": rank}}
                               for rank in (1, 2, 4)}}
    assert plots.is_rank_sweep(summary)
    accuracy, difference = drawn(plots.draw_accuracy_vs_rank(summary))
    assert legends_clear_of_the_data([accuracy])
    lora, dora = (container.lines[0] for container in accuracy.containers)  # each errorbar's data line
    assert (lora.get_marker(), lora.get_linestyle()) != (dora.get_marker(), dora.get_linestyle())


def test_the_trailing_mean_starts_at_the_first_batch_and_averages_a_window():
    assert plots.moving_average([4.0, 2.0, 6.0, 0.0], window=2) == [4.0, 3.0, 4.0, 3.0]
    assert plots.moving_average([1.0, 2.0], window=10) == [1.0, 1.5]  # a window longer than the curve


def test_curves_average_over_seeds_batch_by_batch():
    assert plots.mean_over_seeds([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]]) == [2.0, 3.0, 4.0]


def test_a_rank_sweep_gets_a_loss_panel_per_adapter_and_one_for_the_baselines():
    methods = {"pretrained": method_result(), "head": method_result(method="head"),
               **{f"{m}_r{r}": method_result(method=m, rank=r) for m in ("lora", "dora") for r in (1, 2)}}
    sweep = {"methods": methods, "config": {"experiment": {"ranks": [1, 2]}}}
    assert plots.loss_panels(sweep, list(methods)) == {
        "pretraining (all weights)": ["pretrained"], "fine-tuning: baselines": ["head"],
        "fine-tuning: lora by rank": ["lora_r1", "lora_r2"], "fine-tuning: dora by rank": ["dora_r1", "dora_r2"]}
    one_rank = {**sweep, "config": {"experiment": {"ranks": None}}}
    assert plots.loss_panels(one_rank, list(methods))["fine-tuning"] == list(methods)[1:]


def labelled_ticks(axis) -> list[str]:
    """The tick labels an axis shows within its view, once drawn."""
    low, high = sorted(axis.get_view_interval())
    return [label.get_text() for location, label in zip(axis.get_majorticklocs(), axis.get_ticklabels())
            if low * (1 - 1e-9) <= location <= high * (1 + 1e-9) and label.get_text()]


def test_a_smoke_runs_figures_name_the_run_read_at_their_range_and_mark_its_epochs(tmp_path, mnist_root):
    """Issue 31: a smoke run's loss axis, 0.15 to 0.7, showed one tick (10^0); its titles gave the
    seed alone; its two fine-tuning epochs ran into each other unmarked."""
    from conftest import smoke

    run = smoke(tmp_path, "lora.alpha=16", "dora.alpha=16", "analysis.every_n_batches=8")
    summary = plots.load_summary(run)
    metrics = run / "metrics.jsonl"
    epochs = plots.epoch_starts(metrics)
    loss = plots.draw_loss_curves(plots.loss_curves(metrics), summary, epochs)
    for figure in (loss, plots.draw_dm_dd(summary)):
        title = figure.get_suptitle()
        assert "lora r=4 α=16 lr=0.005" in title and "dora r=4 α=16 lr=0.005" in title and "seed 123" in title
        for ax in drawn(figure):
            assert len(labelled_ticks(ax.xaxis)) >= 3 and len(labelled_ticks(ax.yaxis)) >= 3, ax.get_title()
    fine_tuning = next(ax for ax in loss.axes if ax.get_title().startswith("fine-tuning"))
    marks = [line.get_xdata()[0] for line in fine_tuning.get_lines() if line.get_gid() == "epoch start"]
    assert epochs["lora"] == [33] and marks == [33]  # 2 epochs of 32 batches: the second begins at step 33


def test_a_loss_axis_over_decades_keeps_3_labelled_ticks(tmp_path):
    run = finished_run(tmp_path / "run")  # losses from 2.3 down to 0.0004: four decades
    summary = plots.load_summary(run)
    figure = plots.draw_loss_curves(plots.loss_curves(run / "metrics.jsonl"), summary)
    assert all(len(labelled_ticks(ax.yaxis)) >= 3 for ax in drawn(figure))


def test_a_two_rank_sweep_still_shows_3_rank_ticks():
    assert plots.rank_ticks([2, 4]) == [2, 4, 8] and plots.rank_ticks([8]) == [4, 8, 16]
    assert plots.rank_ticks([1]) == [1, 2, 4]
    assert plots.rank_ticks([1, 4, 16]) == [1, 4, 16]
