"""Seeds, rank sweeps, baselines and shifted tasks: the aggregation on made-up runs, then the whole
pipeline on a slice of MNIST, through the command line."""

import dataclasses
import json
import re
import statistics

import pytest

from conftest import REPO, smoke, summary_of
from loradora.config import ConfigError, load_config
from loradora.experiment import adapter_pairs, aggregate
from loradora.stats import short_verdict
from loradora.variants import finetune_variants
from loradora.results import SeedResults
from helpers import method_result, seed_results


def fake_run(seed: int, accuracies: dict) -> SeedResults:
    return seed_results(seed, {name: method_result(method=name, rank=4, test_accuracy=accuracy, train_seconds=1.0 + seed)
                               for name, accuracy in accuracies.items()})


def test_one_seed_keeps_the_single_run_schema():
    run = fake_run(1, {"pretrained": 95.0, "lora": 97.0, "dora": 97.1})
    summary = aggregate([run])
    assert summary["methods"] is run.methods and summary["comparisons"] == {} and summary["seeds"] == [1]


def test_seeds_aggregate_to_mean_std_and_a_paired_difference():
    lora, dora = [96.9, 97.0, 97.0, 97.0, 97.1], [97.0, 97.2, 96.8, 97.4, 97.1]
    runs = [fake_run(seed, {"lora": l, "dora": d}) for seed, l, d in zip(range(5), lora, dora)]
    summary = aggregate(runs)
    result = summary["methods"]["dora"]
    assert result.test_accuracy == pytest.approx(statistics.fmean(dora))
    assert result.test_accuracy_std == pytest.approx(statistics.stdev(dora))
    assert result.test_accuracies == dora and result.n_seeds == 5
    assert result.train_seconds == pytest.approx(3.0) and result.n_test == 100
    assert not hasattr(result, "test_correct")  # per-seed counts live in summary["runs"]
    (name, comparison), = summary["comparisons"].items()
    assert name == "dora - lora"
    assert comparison["mean"] == pytest.approx(0.1) and comparison["df"] == 4
    assert comparison["ci95"] == pytest.approx([-0.1776, 0.3776], abs=1e-4)  # t(4) = 2.7764
    assert comparison["excludes_zero"] is False and "cannot tell DoRA from LoRA" in comparison["verdict"]
    assert comparison["ranks"] == {"dora": 4, "lora": 4}


def test_a_pair_of_different_ranks_says_so():
    runs = [fake_run(seed, {"lora": 97.0 + seed / 10, "dora": 97.0}) for seed in range(3)]
    for run in runs:
        run.methods["lora"] = dataclasses.replace(run.methods["lora"], rank=8)
    comparison = aggregate(runs)["comparisons"]["dora - lora"]
    assert comparison["ranks"] == {"dora": 4, "lora": 8} and "DoRA (rank 4)" in comparison["verdict"]


def test_the_parts_of_dora_are_paired_with_each_other_and_lora_bonferroni_adjusted():
    accuracies = {1: (97.0, 97.1, 97.6, 97.0), 2: (96.8, 96.9, 97.5, 96.9), 3: (97.2, 97.2, 97.9, 97.1)}
    runs = []
    for seed, (lora, dora, magnitude, direction) in accuracies.items():
        runs.append(seed_results(seed, {
            "lora": method_result(method="lora", rank=4, test_accuracy=lora),
            "dora": method_result(method="dora", rank=4, test_accuracy=dora),
            "magnitude": method_result(method="magnitude", rank=None, test_accuracy=magnitude),
            "direction": method_result(method="direction", rank=4, test_accuracy=direction)}))
    parts = aggregate(runs)["part_comparisons"]
    assert list(parts) == ["magnitude - lora", "direction - lora", "dora - magnitude", "dora - direction",
                           "magnitude - direction"]
    assert parts["magnitude - lora"]["differences"] == pytest.approx([0.6, 0.7, 0.7])
    assert all(c["confidence"] == pytest.approx(1 - 0.05 / 5) for c in parts.values())
    assert parts["magnitude - lora"]["adjustment"] == "Bonferroni over 5 pairs"
    assert "the magnitude alone scores higher than LoRA" in parts["magnitude - lora"]["verdict"]
    assert "dora - lora" in aggregate(runs)["comparisons"]  # the run's own question, unadjusted, stays
    only_adapters = [seed_results(run.seed, {k: v for k, v in run.methods.items() if k in ("lora", "dora")})
                     for run in runs]
    assert aggregate(only_adapters)["part_comparisons"] == {}


def test_variants_of_a_rank_sweep():
    config = load_config(None, ["finetune.methods=[lora, dora, head]", "experiment.ranks=[1, 8]", "dora.alpha=3"])
    variants = finetune_variants(config)
    assert [v.name for v in variants] == ["lora_r1", "lora_r8", "dora_r1", "dora_r8", "head"]
    assert variants[3].adapter["rank"] == 8 and variants[3].adapter["alpha"] == 3.0
    assert variants[3].settings()["s"] == 3.0 / 8
    assert variants[4].settings() == {"method": "head", "rank": None, "alpha": None, "scaling": None, "s": None,
                                      "rates": "tuned"}
    shared = [variant.at_shared_rate() for variant in variants]
    assert [v.name for v in shared] == ["lora_r1@shared", "lora_r8@shared", "dora_r1@shared", "dora_r8@shared",
                                        "head@shared"]
    results = {v.name: method_result(**v.settings()) for v in [*variants, *shared]}
    assert adapter_pairs(results) == [("dora_r1", "lora_r1"), ("dora_r8", "lora_r8"),
                                      ("dora_r1@shared", "lora_r1@shared"), ("dora_r8@shared", "lora_r8@shared")]


def test_variants_pair_by_their_fields_not_their_names():
    # Regression: pairs came from parsing names ("dora_r8" -> "lora_r8", "@shared" split off).
    results = {"a": method_result(method="dora", rank=8, rates="tuned"),
               "b": method_result(method="lora", rank=8, rates="shared"),
               "c": method_result(method="lora", rank=8, rates="tuned"),
               "d": method_result(method="dora", rank=8, rates="shared")}
    assert adapter_pairs(results) == [("a", "c"), ("d", "b")]


@pytest.mark.parametrize("override,message", [
    ("finetune.methods=[lora, bogus]", "finetune.methods: got ['lora', 'bogus'], allowed: a list drawn from "
                                       "lora, dora, magnitude, direction, full, head"),
    ("finetune.methods=[lora, lora]", "each method at most once"),
    ("finetune.task=flip", "finetune.task: got 'flip', allowed: one of same, rotate, permute, gain, turn"),
    ("experiment.seeds=[]", "experiment.seeds"),
    ("experiment.seeds=[1, 1]", "distinct"),
    ("experiment.ranks=[0, 4]", "experiment.ranks: got [0, 4]"),
    ("analysis.every_n_batches=0", "analysis.every_n_batches: got 0"),
])
def test_bad_experiment_settings_name_the_key(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert message in str(error.value)


@pytest.mark.parametrize("name", ["seeds", "rank_sweep", "shift", "decisive", "decisive_shift", "why"])
def test_shipped_configs_load(name):
    config = load_config(REPO / "configs" / f"{name}.yaml")
    assert config.experiment.seeds and len(config.experiment.seeds) >= 3
    if name == "rank_sweep":
        assert config.experiment.ranks == [1, 2, 4, 8, 16, 32, 64]
    if "shift" in name:
        assert config.finetune.task != "same"
    if name.startswith("decisive"):  # rates chosen on a held-out split, on seeds apart from the compared ones
        assert config.data.validation_size > 0 and len(config.experiment.lrs) > 1
        assert not set(config.experiment.tuning_seeds) & set(config.experiment.seeds)
        assert not config.experiment.tuning_overlap
    if name == "why":  # docs/why.md: DoRA's parts alone beside it, on the task built for the magnitude
        assert config.finetune.task == "gain" and {"magnitude", "direction", "lora", "dora"} <= set(config.finetune.methods)
        assert config.data.validation_size > 0 and len(config.experiment.lrs) > 1


def tiny_run(tmp_path, name, *overrides):
    """The pipeline on 512 training and 200 test images; returns the run folder."""
    return smoke(tmp_path, "data.train_subset=512", "data.test_subset=200", "finetune.epochs=1", *overrides,
                 run_name=name)


def test_seeds_with_baselines_report_statistics_and_plots(tmp_path, mnist_root, capsys):
    run = tiny_run(tmp_path, "seeds", "experiment.seeds=[1, 2, 3]",
                   "finetune.methods=[lora, dora, full, head]", "analysis.every_n_batches=4")
    out = capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["seeds"] == [1, 2, 3] and [r["seed"] for r in summary["runs"]] == [1, 2, 3]
    assert list(summary["methods"]) == ["pretrained", "lora", "dora", "full", "head"]
    assert summary["methods"]["full"]["trainable_params"] == 136_074
    assert summary["methods"]["head"]["trainable_params"] == 2_570
    per_seed = {m: [r["methods"][m]["test_accuracy"] for r in summary["runs"]] for m in ("lora", "dora")}
    assert summary["methods"]["dora"]["test_accuracies"] == per_seed["dora"]
    comparison = summary["comparisons"]["dora - lora"]
    assert comparison["differences"] == pytest.approx([d - l for d, l in zip(per_seed["dora"], per_seed["lora"])])
    assert "mean ± std over 3 seeds" in out and "dora - lora:" in out and "95% CI" in out
    # one verdict paragraph, for new test images; this test set's own only where it decides otherwise
    printed = " ".join(out.split())  # printed wrapped
    images = comparison["new_test_images"]
    assert printed.count(images["verdict"]) == 1
    differs = short_verdict(comparison["ci"], 0.05) != short_verdict(images["ci"], 0.05)
    assert (comparison["verdict"] in printed) == differs
    # dM/dD for every fine-tuned layer: 8 batches, measured at steps 4 and 8, for 3 seeds.
    assert set(summary["decomposition"]) == {"lora", "dora", "full", "head"}
    assert summary["decomposition"]["lora"]["n"] == 3 * 2 * 3 and summary["decomposition"]["head"]["n"] == 3 * 2
    assert "Weight decomposition" in out
    assert (run / "loss_curves.png").exists() and (run / "dm_dd.png").exists()
    assert not (run / "accuracy_vs_rank.png").exists()  # not a rank sweep


def test_the_parts_of_dora_alone_run_through_the_pipeline_and_their_files_reload(tmp_path, mnist_root):
    # magnitude and direction take dora's settings; the magnitude alone has no rank to sweep
    run = tiny_run(tmp_path, "parts", "experiment.seeds=[1, 2]", "experiment.ranks=[1, 2]",
                   "finetune.methods=[dora, magnitude, direction]", "dora.alpha=3", "analysis.every_n_batches=4")
    summary = summary_of(run)
    assert list(summary["methods"]) == ["pretrained", "dora_r1", "dora_r2", "magnitude", "direction_r1", "direction_r2"]
    methods = summary["methods"]
    assert methods["magnitude"]["trainable_params"] == 128 + 256 + 10 and methods["magnitude"]["rank"] is None
    assert methods["direction_r2"]["trainable_params"] == methods["dora_r2"]["trainable_params"] - (128 + 256 + 10)
    assert methods["direction_r2"]["s"] == 3.0 / 2
    first = summary["runs"][0]["methods"]
    for name in ("magnitude", "direction_r1"):  # the adapter file re-attached to the saved base predicts the same
        assert first[name]["file_checks"]["reloaded_test_correct"] == first[name]["test_correct"]
        assert json.loads((run / "peft" / name / "adapter_config.json").read_text())["use_dora"] is True
    assert "direction_r1" in summary["decomposition"]  # the magnitude's dD is rounding only: a line, or why not
    assert "magnitude" in {**summary["decomposition"], **summary["decomposition_unavailable"]}
    assert methods["magnitude"]["test_accuracies"] != methods["direction_r1"]["test_accuracies"]


def test_rank_sweep_reports_every_rank(tmp_path, mnist_root, capsys):
    run = tiny_run(tmp_path, "sweep", "experiment.seeds=[1, 2]", "experiment.ranks=[1, 2]",
                   "finetune.methods=[lora, dora, head]", "analysis.every_n_batches=null")
    out = capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary["methods"]) == ["pretrained", "lora_r1", "lora_r2", "dora_r1", "dora_r2", "head"]
    assert summary["methods"]["lora_r1"]["trainable_params"] == 1 * (912 + 384 + 266)
    assert summary["methods"]["dora_r2"]["trainable_params"] == 2 * (912 + 384 + 266) + 394
    assert list(summary["comparisons"]) == ["dora_r1 - lora_r1", "dora_r2 - lora_r2"]
    assert [c["adjustment"] for c in summary["comparisons"].values()] == ["Bonferroni over 2 ranks"] * 2
    # The rank table's rows are printed unwrapped (the sentences around them are wrapped, and their
    # wording, so where the wrap falls, depends on the measured numbers: another CPU, other words).
    assert re.search(r"^rank .*dora - lora, paired \[97\.5% CI\], this test set\s+new test images$", out, re.MULTILINE)
    for rank, lora_params, dora_params in [(1, "1,562", "1,956"), (2, "3,124", "3,518")]:
        assert re.search(rf"^{rank}\s+{lora_params}\s+\S+ ± \S+%\s+{dora_params}\s", out, re.MULTILINE), out
    assert (run / "accuracy_vs_rank.png").exists() and (run / "loss_curves.png").exists()
    assert not (run / "dm_dd.png").exists() and summary["decomposition"] == {}  # analysis off


def test_shifted_task_reports_the_base_on_the_shifted_test_set(tmp_path, mnist_root, capsys):
    run = tiny_run(tmp_path, "shift", "finetune.task=rotate", "finetune.rotate_degrees=60",
                   "finetune.methods=[lora]")
    out = capsys.readouterr().out
    methods = json.loads((run / "summary.json").read_text())["methods"]
    assert list(methods) == ["pretrained", "no_finetune", "lora"]
    assert methods["no_finetune"]["trainable_params"] == 0 and methods["no_finetune"]["n_test"] == 200
    # Rotation by 60 degrees costs the base most of its accuracy; the adapter wins some of it back.
    assert methods["no_finetune"]["test_accuracy"] < methods["pretrained"]["test_accuracy"] - 20
    assert methods["lora"]["test_accuracy"] > methods["no_finetune"]["test_accuracy"]
    assert "MNIST rotated 60 degrees" in out


@pytest.mark.parametrize("task", ["gain", "turn"])
def test_a_teacher_task_scores_each_seed_against_its_own_teacher(tmp_path, mnist_root, task):
    # Rebuilt here from the saved files: seed 1's base, its teacher (teachers.py, teacher seed 0),
    # and the saved LoRA adapter, scored against that teacher's labels of the same 200 test images.
    import copy

    import torch

    from loradora.checkpoints import load_adapters, load_model
    from loradora.data import load_mnist
    from loradora.model import MLP
    from loradora.teachers import TEACHERS
    from loradora.training import accuracy, predict

    run = tiny_run(tmp_path, task, "experiment.seeds=[1, 2]", "finetune.methods=[lora, magnitude]",
                   f"finetune.task={task}")
    summary = summary_of(run)
    first = summary["runs"][0]["methods"]
    base = load_model(MLP(), run / "pretrained.safetensors")
    test = load_mnist(mnist_root, train=False, subset=200)
    labels = predict(TEACHERS[task](base, 0), test.images).argmax(dim=1)
    assert accuracy(predict(base, test.images), labels).correct == first["no_finetune"]["test_correct"]
    tuned = load_adapters(copy.deepcopy(base), run / "adapters" / "lora.safetensors")
    assert accuracy(predict(tuned, test.images), labels).correct == first["lora"]["test_correct"]
    assert accuracy(predict(base, test.images), test.labels).correct == first["pretrained"]["test_correct"]
    teacher = summary["teacher"]
    assert teacher["task"] == task and len(teacher["test_accuracy_on_true_labels"]) == 2
    assert not torch.equal(labels, test.labels)  # the teacher is not the truth
