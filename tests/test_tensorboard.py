"""log.tensorboard: the event files of a smoke run hold what its metrics.jsonl holds; without the
tensorboard package the run stops before it starts, in one line."""

import json
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import smoke
TAGS = {"loss/batch", "loss/epoch", "accuracy/train", "accuracy/test"}




def scalars(directory) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the event files in ``directory``: tag -> [(step, value), ...]."""
    events = EventAccumulator(str(directory), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def float32(values) -> list[float]:
    """TensorBoard stores scalars as float32: the metrics' values as it holds them."""
    return [float(v) for v in np.asarray(values, dtype=np.float32)]


def test_event_files_hold_the_metrics_per_phase_and_seed(tmp_path, mnist_root):
    # Two seeds, so that each (phase, seed) is its own TensorBoard run; two fine-tuning epochs, so
    # that the batch steps must carry on from one epoch to the next. No analysis: it is not charted.
    overrides = ["experiment.seeds=[1, 2]", "finetune.epochs=2", "analysis.every_n_batches=null"]
    run = smoke(tmp_path, "log.tensorboard=true", *overrides)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    board = run / "tensorboard"
    runs = sorted(str(path.parent.relative_to(board)) for path in board.rglob("events.out.tfevents.*"))
    assert runs == [f"{phase}/seed_{seed}" for phase in ("dora", "lora", "pretrained") for seed in (1, 2)]
    for phase in ("pretrained", "lora", "dora"):
        for seed in (1, 2):
            mine = [r for r in records if r["phase"] == phase and r["seed"] == seed]
            epochs = [r for r in mine if r["kind"] == "epoch"]
            (test,) = [r for r in mine if r["kind"] == "test"]
            series = scalars(board / phase / f"seed_{seed}")
            assert set(series) == TAGS
            losses = [loss for r in epochs for loss in r["batch_losses"]]
            assert series["loss/batch"] == list(zip(range(len(losses)), float32(losses)))
            assert series["loss/epoch"] == list(zip([r["epoch"] for r in epochs], float32([r["loss"] for r in epochs])))
            assert series["accuracy/train"] == list(zip([r["epoch"] for r in epochs],
                                                        float32([r["train_accuracy"] for r in epochs])))
            assert series["accuracy/test"] == [(len(epochs), *float32([test["test_accuracy"]]))]
    # The methods differ, so the charts do: the files are not one series written three times.
    assert scalars(board / "lora" / "seed_1")["loss/batch"] != scalars(board / "dora" / "seed_1")["loss/batch"]


def test_without_the_package_the_run_stops_in_one_line(tmp_path, mnist_root, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # its import now fails
    smoke(tmp_path, "log.tensorboard=true", exit_code=2)
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "needs the tensorboard package: pip install tensorboard" in error
    assert list(tmp_path.iterdir()) == []  # no run folder


def test_off_by_default_writes_no_event_files(tmp_path, mnist_root, monkeypatch):
    # The default run must not need the package at all.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    smoke(tmp_path, "finetune.methods=[lora]", "finetune.epochs=1")
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_the_chosen_learning_rates_are_charted(tmp_path):
    from loradora.tensorboard import TensorBoardLog
    board = TensorBoardLog(tmp_path)
    board({"kind": "tuning", "phase": "dora", "lr": 0.002,
           "validation_accuracy": {"0.001": 97.5, "0.002": 97.75, "0.02": None}})
    board.close()
    series = scalars(tmp_path / "dora" / "seed_None")
    assert series["tuning/chosen_lr"] == [(0, pytest.approx(0.002))]
    assert series["tuning/validation_accuracy/lr_0.002"] == [(0, 97.75)]
    assert "tuning/validation_accuracy/lr_0.02" not in series  # diverged there: nothing to chart
