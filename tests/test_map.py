"""The map of regimes (issue 19): the fine-tuning set drawn from the task's pool, a fixed number of
steps, and a map of cells whose every cell adapts the same base."""

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import smoke, summary_of
from loradora.config import ConfigError, load_config
from loradora.data import Split, draw
from loradora.regime_map import short_verdict
from loradora.training import member_batches


def pool(n: int) -> Split:
    return Split(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n) % 10)


def test_smaller_fine_tuning_sets_lie_inside_larger_ones_and_validation_is_apart():
    images = pool(1000)
    small, validation = draw(images, 50, 200, seed=0)
    large, same_validation = draw(images, 500, 200, seed=0)
    everything, _ = draw(images, None, 200, seed=0)
    ids = {name: set(split.images[:, 0].long().tolist()) for name, split in
           [("small", small), ("large", large), ("all", everything), ("validation", validation)]}
    assert len(ids["small"]) == 50 and len(ids["large"]) == 500 and len(ids["all"]) == 800
    assert ids["small"] < ids["large"] < ids["all"]  # nested: one draw for every size
    assert torch.equal(validation.images, same_validation.images)  # the same validation at every size
    assert not ids["validation"] & ids["all"]  # never trained on
    assert torch.equal(small.labels, small.images[:, 0].long() % 10)  # images keep their labels
    assert draw(images, 50, 0, seed=0)[1] is None
    assert set(draw(images, 50, 200, seed=1)[0].images[:, 0].tolist()) != ids["small"]  # another draw


def test_a_fixed_number_of_steps_repeats_the_passes_and_cuts_the_last():
    generator = torch.Generator().manual_seed(0)
    batches = member_batches(300, 64, generator, "cpu", steps=12)
    assert len(batches) == 12
    assert [len(b) for b in batches[:5]] == [64, 64, 64, 64, 44]  # one pass over 300 images
    assert sorted(torch.cat(batches[5:10]).tolist()) == list(range(300))  # the second, whole
    assert len(member_batches(300, 64, torch.Generator().manual_seed(0), "cpu")) == 5  # no steps: one pass


def test_fine_tuning_keys_are_checked():
    with pytest.raises(ConfigError, match="validation images come from one place"):
        load_config(None, ["data.validation_size=100", "finetune.validation_size=100"])
    with pytest.raises(ConfigError, match="finetune.train_subset"):
        load_config(None, ["data.train_subset=1000", "finetune.validation_size=900", "finetune.train_subset=200"])
    with pytest.raises(ConfigError, match="finetune.steps"):
        load_config(None, ["finetune.steps=0"])
    # the rates may be chosen on the pool's validation images
    assert load_config(None, ["finetune.validation_size=100", "experiment.lrs=[0.01]", "experiment.tuning_seeds=[9]"])
    with pytest.raises(ConfigError, match="map.rotate_degrees"):
        load_config(None, ["map.rotate_degrees=[45]", "map.train_subsets=[100]", "experiment.seeds=[1, 2]"])
    with pytest.raises(ConfigError, match="map.train_subsets"):
        load_config(None, ["finetune.task=rotate", "map.rotate_degrees=[45]", "map.train_subsets=[100]"])


def test_a_verdict_in_one_word_reads_the_interval_it_is_given():
    assert short_verdict((0.01, 0.3), 0.05) == "dora"
    assert short_verdict((-0.3, -0.01), 0.05) == "lora"
    assert short_verdict((-0.04, 0.04), 0.05) == "tie"
    assert short_verdict((-0.04, 0.3), 0.05) == "undecided"


# A map in miniature: 2 angles by 2 sizes, 3 compared seeds, 2 tuning seeds, ranks 1 and 4.
MAP = ["data.train_subset=1200", "data.test_subset=300", "finetune.task=rotate", "finetune.validation_size=300",
       "finetune.steps=12", "experiment.seeds=[3, 4, 5]", "experiment.tuning_seeds=[1, 2]",
       "experiment.lrs=[1.0e-3, 3.0e-3]", "experiment.ranks=[1, 4]", "experiment.shared_lr=false",
       "analysis.every_n_batches=null", "cache.enabled=false", "map.rotate_degrees=[30, 90]",
       "map.train_subsets=[200, null]"]


def map_run(tmp_path, name, *overrides):
    return smoke(tmp_path, *MAP, *overrides, run_name=name)


def test_a_map_answers_every_cell_and_rank_adjusted_for_them_all(tmp_path, mnist_root, capsys):
    folder = map_run(tmp_path, "map")
    out = capsys.readouterr().out
    report = json.loads((folder / "map.json").read_text())
    assert report["status"] == "complete" and report["cells"] == ["rotate30_n200", "rotate30_nall",
                                                                   "rotate90_n200", "rotate90_nall"]
    assert report["family"] == 8 and report["adjustment"] == "Bonferroni over 8 comparisons (cells x ranks)"
    # every cell adapts the same bases: one set of pretraining jobs, shared
    assert report["same_bases"] is True
    answers = report["answers"]
    assert [(a["rotate_degrees"], a["n_train"], a["rank"]) for a in answers] == [
        (30, 200, 1), (30, 200, 4), (30, 900, 1), (30, 900, 4), (90, 200, 1), (90, 200, 4), (90, 900, 1), (90, 900, 4)]
    for a in answers:
        images = a["new_images"]
        assert images["confidence"] == pytest.approx(1 - 0.05 / 8)
        assert images["ci"][0] <= images["ci95"][0] and images["ci"][1] >= images["ci95"][1]  # adjusted is wider
        assert a["verdict"] in ("dora", "lora", "tie", "undecided")
        assert images["mean"] == pytest.approx(a["dora_accuracy"] - a["lora_accuracy"])
    cell = summary_of(folder / "rotate30_n200")
    assert cell["config"]["finetune"]["train_subset"] == 200 and cell["config"]["map"]["rotate_degrees"] is None
    assert cell["methods"]["lora_r1"]["n_train"] == 200 and cell["methods"]["lora_r1"]["steps"] == 12
    assert cell["tuning"]["lora_r1"]["n_validation"] == 300
    assert (folder / "map.png").exists() and (folder / "map.md").read_text().count("\n| 30° |") == 4
    assert "Bonferroni over 8 comparisons" in " ".join(out.split())
    # the trends, each coefficient over the 3 seeds' own fits (issue 30): the map's per-seed differences
    # fitted again here by ordinary least squares give the same mean coefficients
    fit = report["trends"]["fixed steps"]
    assert [c["name"] for c in fit["coefficients"]] == ["intercept", "log2(rank)", "log2(n_train)/3", "angle",
                                                        "log2(rank) × angle"]
    seeds = fit["seeds"]
    assert seeds == [3, 4, 5]
    x = torch.tensor([[1.0, math.log2(a["rank"]), math.log2(a["n_train"]) / 3, a["rotate_degrees"] == 90,
                       math.log2(a["rank"]) * ((a["rotate_degrees"] == 90) - 0.5)] for a in answers], dtype=torch.float64)
    d = torch.tensor([[a["per_seed"][str(seed)] for a in answers] for seed in seeds], dtype=torch.float64)
    slopes = torch.linalg.lstsq(x, d.T).solution.mean(dim=1)  # uncentred: the slopes are the same
    for j in (1, 2, 4):
        assert fit["coefficients"][j]["estimate"] == pytest.approx(float(slopes[j]), abs=1e-9 * (1 + abs(float(slopes[j]))))
    assert "Trends of DoRA − LoRA" in (folder / "map.md").read_text()


SECOND = MAP + ["map.second_tuning_seeds=[6, 7]", "map.fixed_passes=3", "map.fixed_passes_degrees=[90]",
                "map.fixed_passes_ranks=[1]", "finetune.subset_per_seed=true"]


def test_a_second_tuning_set_retrains_only_where_its_rates_differ():
    """Issue 30: the rates chosen on other tuning seeds; the compared seeds train again only where a
    method's choice moved, every cell of a seed still adapts one base (each seed pretrained once)."""
    from loradora.plan import Plan, Stamp
    from loradora.regime_map import cells

    config = load_config(None, SECOND)
    names = [cell.name for cell in cells(config.map)]
    assert names[:5] == ["rotate30_n200", "rotate30_nall", "rotate90_n200", "rotate90_nall", "rotate90_n200_passes3"]
    assert names[6:] == [name + "_tuning2" for name in names[:6]]
    configs = {cell.name: cell.config(config, Path("map")) for cell in cells(config.map)}
    assert configs["rotate90_nall_passes3"].experiment.ranks == [1] and configs["rotate90_nall_passes3"].finetune.steps is None
    assert configs["rotate30_n200_tuning2"].experiment.tuning_seeds == [6, 7]
    plan = Plan({name: configs[name] for name in ("rotate30_n200", "rotate30_n200_tuning2")}, Stamp("c", "2.x", "cpu"))
    pretraining = [m.seed for job in plan.pretraining() for m in job.members]
    assert sorted(pretraining) == [1, 2, 3, 4, 5, 6, 7]
    progress = {job.key: () for job in plan.pretraining()}
    tuning = plan.ready(progress)
    for job in tuning:  # set 1 and set 2 agree on LoRA (0.003); on DoRA set 2 prefers 0.001
        progress[job.key] = [90.0 + (m.lr == 0.003) - 2 * (m.lr == 0.003 and m.seed in (6, 7) and
                                                          m.variant.method == "dora") for m in job.members]
    first, second = (plan.finetuning(name, progress) for name in ("rotate30_n200", "rotate30_n200_tuning2"))
    shared = {job.key for job in first} & {job.key for job in second}
    assert {m.variant.method for job in first if job.key in shared for m in job.members} == {"lora"}
    assert {(m.variant.method, m.lr) for job in second if job.key not in shared for m in job.members} == {("dora", 0.001)}
    assert len(plan.ready(progress)) == len({job.key for job in first + second})  # shared jobs once


def test_a_map_with_a_second_tuning_set_and_a_fixed_passes_arm_says_which_verdicts_hold(tmp_path, mnist_root):
    folder = smoke(tmp_path, *SECOND, "map.rotate_degrees=[90]", "map.train_subsets=[200]", "experiment.ranks=[1]",
                   "experiment.seeds=[3, 4]", "experiment.tuning_seeds=[1]", "map.second_tuning_seeds=[2]",
                   run_name="map2")
    report = json.loads((folder / "map.json").read_text())
    assert report["family"] == 2  # the first tuning set's questions, both arms; set 2 asks them again
    steps, passes = report["answers"]
    assert (steps["passes"], passes["passes"]) == (None, 3)
    for a in report["answers"]:
        again = a["second_tuning"]
        assert a["rates_agree"] == ((a["lora_lr"], a["dora_lr"]) == (again["lora_lr"], again["dora_lr"]))
        assert a["settled"] == (a["verdict"] != "undecided" and again["verdict"] == a["verdict"])
    assert summary_of(folder / "rotate90_n200")["methods"]["lora_r1"]["n_train"] == 200
    assert summary_of(folder / "rotate90_n200_passes3")["methods"]["lora_r1"]["epochs"] == 3
    assert "Rate stability" in (folder / "map.md").read_text()
