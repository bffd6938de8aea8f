"""Issue 10: the validation split, the learning-rate choice, and the verdicts, on hand-made numbers
and on a slice of MNIST. The test set must choose nothing."""

import pytest
import torch

from conftest import smoke, summary_of
from loradora import data
from loradora.config import ConfigError, load_config
from loradora.data import Split, hold_out
from loradora.experiment import aggregate, rate_sensitivity
from loradora.plan import choose_rate, extended_rate, grid_edge
from loradora.stats import exclusion_power, paired_difference, seeds_needed, t_quantile, t_quantile_975, verdict
from helpers import method_result, seed_results

# ---- the validation split ----


def test_the_held_out_images_are_never_in_the_training_part():
    images = torch.arange(1000, dtype=torch.float32).unsqueeze(1)  # image i holds the value i
    split = Split(images, torch.arange(1000) % 10)
    rest, validation = hold_out(split, 200, seed=3)
    kept, held = set(rest.images[:, 0].tolist()), set(validation.images[:, 0].tolist())
    assert len(held) == 200 and len(kept) == 800 and not kept & held and kept | held == set(range(1000))
    assert rest.images[:, 0].tolist() == sorted(kept)  # the rest keep their order
    assert torch.equal(validation.labels, validation.images[:, 0].long() % 10)  # labels travel with images
    again, _ = hold_out(split, 200, seed=3)
    other, _ = hold_out(split, 200, seed=4)
    assert torch.equal(again.images, rest.images) and not torch.equal(other.images, rest.images)


# ---- the selection rule ----


def test_the_best_mean_validation_accuracy_wins_ties_go_to_the_smaller_rate():
    assert choose_rate({1e-3: 96.0, 3e-3: 97.5, 1e-2: 97.1}) == 3e-3
    assert choose_rate({1e-3: 97.5, 3e-3: 97.5, 1e-2: 97.1}) == 1e-3
    assert choose_rate({1e-3: 96.0, 3e-3: None, 1e-2: 95.0}) == 1e-3  # a diverged rate is never chosen
    assert choose_rate({1e-3: None, 3e-3: None}) == 1e-3


# ---- the verdicts and the adjusted intervals ----


def test_an_interval_that_excludes_zero_names_the_better_method():
    difference = paired_difference([97.5, 97.6, 97.4, 97.55], [97.3, 97.35, 97.2, 97.3])
    assert difference.excludes_zero
    assert "excludes zero: over 4 seeds, DoRA scores higher than LoRA by" in verdict(difference, "DoRA", "LoRA")
    assert "LoRA scores higher than DoRA" in verdict(paired_difference([97.3, 97.35, 97.2, 97.3],
                                                                       [97.5, 97.6, 97.4, 97.55]), "DoRA", "LoRA")


def test_an_interval_inside_the_margin_is_equivalence():
    difference = paired_difference([97.01, 97.00, 96.99, 97.00, 97.01, 96.99], [97.0] * 6)
    assert not difference.excludes_zero
    assert "are equivalent within 0.05 points" in verdict(difference, "DoRA", "LoRA", margin=0.05)
    assert "cannot tell" in verdict(difference, "DoRA", "LoRA", margin=0.001)


def test_an_undecided_interval_says_how_many_seeds_would_decide():
    lora = [97.27, 97.27, 97.38, 97.43, 97.18]  # the README's five seeds
    dora = [97.37, 97.26, 97.53, 97.34, 97.25]
    difference = paired_difference(dora, lora)
    text = verdict(difference, "DoRA", "LoRA")
    n, outcome = seeds_needed(difference.mean, difference.std, 0.05)
    assert outcome == "exclude zero with 80% power" and f"about {n} seeds would exclude zero with 80% power" in text
    # at n the interval would exclude zero with 80% power, at n - 1 not yet
    assert exclusion_power(difference.mean, difference.std, n - 1) < 0.80 <= exclusion_power(
        difference.mean, difference.std, n)
    assert seeds_needed(0.0, 0.1, 0.05)[1] == "show equivalence within ±0.05 with 80% power"


def test_t_quantiles_match_the_printed_table():
    table = {1: 12.706, 2: 4.303, 4: 2.776, 9: 2.262, 19: 2.093, 29: 2.045}
    for df, value in table.items():
        assert t_quantile_975(df) == pytest.approx(value, abs=6e-4)
    assert t_quantile(0.995, 4) == pytest.approx(4.604, abs=6e-4)  # 99% two-sided
    assert t_quantile(0.995, 10) == pytest.approx(3.169, abs=6e-4)


def test_a_rank_sweep_widens_each_interval_by_bonferroni():
    def run(seed, shift):
        methods = {}
        for rank in (1, 2, 4, 8):
            for method, accuracy in (("lora", 97.0 + seed / 7), ("dora", 97.0 + seed / 7 + shift + seed % 3 / 20)):
                methods[f"{method}_r{rank}"] = method_result(method=method, rank=rank, test_accuracy=accuracy)
        return seed_results(seed, methods)
    comparisons = aggregate([run(seed, 0.05) for seed in range(6)])["comparisons"]
    assert len(comparisons) == 4
    for c in comparisons.values():
        assert c["confidence"] == pytest.approx(1 - 0.05 / 4) and c["adjustment"] == "Bonferroni over 4 ranks"
        assert c["ci"][0] < c["ci95"][0] and c["ci"][1] > c["ci95"][1]
        assert c["t_critical"] == pytest.approx(t_quantile(1 - 0.05 / 8, 5))
        assert "98.75% interval" in c["verdict"] and "Bonferroni" in c["verdict"]
    single = aggregate([seed_results(seed, {k: v for k, v in run(seed, 0.05).methods.items() if k.endswith("_r1")})
                        for seed in range(6)])
    assert single["comparisons"]["dora_r1 - lora_r1"]["confidence"] == 0.95


# ---- the pipeline: rates chosen on validation, the test set untouched ----


def tuning_run(tmp_path, name, *overrides):
    return summary_of(smoke(tmp_path, "data.train_subset=768", "data.test_subset=200", "data.validation_size=256",
                            "finetune.epochs=1", "finetune.methods=[lora, dora]", "experiment.seeds=[3, 4, 5]",
                            "experiment.tuning_seeds=[1, 2]", "experiment.lrs=[1.0e-3, 1.0e-2]",
                            "analysis.every_n_batches=null", "cache.enabled=false", *overrides, run_name=name))


def test_rates_are_chosen_on_validation_and_the_test_set_plays_no_part(tmp_path, mnist_root, monkeypatch, capsys):
    summary = tuning_run(tmp_path, "tuned")
    out = capsys.readouterr().out
    tuning = summary["tuning"]
    assert set(tuning) == {"lora", "dora"} and "Learning rates chosen on 256 validation images" in out
    for name, result in tuning.items():
        assert result["grid"] == [1e-3, 1e-2] and result["seeds"] == [1, 2] and result["n_validation"] == 256
        assert result["lr"] == choose_rate({float(k): v for k, v in result["validation_accuracy"].items()})
        assert all(run["methods"][name]["lr"] == result["lr"] for run in summary["runs"])
        assert result["edge"] == {1e-3: "lowest", 1e-2: "highest"}[result["lr"]]  # a two-rate grid has no inside
    assert "Chosen at the grid's edge: lora (" in out
    assert summary["methods"]["lora"]["n_test"] == 200
    # and, as configured, every method at the shared finetune.lr (0.005, not in the grid)
    assert list(summary["methods"]) == ["pretrained", "lora", "lora@shared", "dora", "dora@shared"]
    assert summary["methods"]["dora@shared"]["lr"] == 0.005 and "dora@shared - lora@shared" in summary["comparisons"]
    # Scramble the test labels: the rates chosen, and every validation accuracy, stay the same.
    # Patched where it is defined, which the pipeline looks up on every load (pipeline.load_data).
    # Regression: the patch went to a global of dora_example.py that main() rebound to the real
    # loader, so the "scrambled" run was the same run and this compared the tuning with itself.
    load = data.load_mnist

    def scrambled(*args, train, **kwargs):
        split = load(*args, train=train, **kwargs)
        return split if train else Split(split.images, split.labels.roll(1))

    monkeypatch.setattr(data, "load_mnist", scrambled)
    scrambled_run = tuning_run(tmp_path, "scrambled")
    assert scrambled_run["methods"]["lora"]["test_accuracy"] < 30  # the scrambled labels were used
    assert scrambled_run["tuning"] == tuning


def test_the_shared_rate_runs_can_be_left_out(tmp_path, mnist_root):
    summary = tuning_run(tmp_path, "fair_only", "experiment.shared_lr=false")
    assert list(summary["methods"]) == ["pretrained", "lora", "dora"] and list(summary["comparisons"]) == ["dora - lora"]


def test_tuning_seeds_stay_apart_from_the_compared_seeds_unless_asked(tmp_path, mnist_root, capsys):
    # issue 19: seeds 1-5 chose the rates and were compared too (tuning_seeds had to be a subset of seeds)
    tuned = ["experiment.lrs=[1.0e-3, 1.0e-2]", "data.validation_size=256"]
    with pytest.raises(ConfigError, match="1, 2 in both"):
        load_config(None, [*tuned, "experiment.seeds=[1, 2, 3]", "experiment.tuning_seeds=[1, 2]"])
    with pytest.raises(ConfigError, match="apart from experiment.seeds"):
        load_config(None, [*tuned, "experiment.seeds=[1, 2, 3]"])
    summary = tuning_run(tmp_path, "overlap", "experiment.seeds=[1, 2, 3]", "experiment.tuning_overlap=true",
                         "experiment.shared_lr=false")
    assert summary["tuning"]["dora"]["compared_too"] == [1, 2]
    assert "seeds 1, 2 chose the rates and are compared too" in " ".join(capsys.readouterr().out.split())


def test_a_rate_at_the_grids_edge_is_flagged_and_one_inside_is_not():
    # issue 19: full fine-tuning's chosen rate on MNIST was the grid's lowest, unflagged
    grid = [1e-3, 2e-3, 5e-3]
    assert [grid_edge(grid, rate) for rate in grid] == ["lowest", None, "highest"]
    assert grid_edge([1e-3], 1e-3) is None  # one rate: nothing was chosen


def test_the_next_rate_past_an_edge_keeps_the_grids_ratio():
    assert extended_rate([1e-3, 2e-3, 5e-3], "lowest") == 5e-4
    assert extended_rate([1e-3, 2e-3, 5e-3], "highest") == 0.0125
    assert extended_rate([3e-3, 1e-3, 1e-2], "highest") == pytest.approx(1e-2 * 1e-2 / 3e-3)


def test_an_edge_rate_extends_the_grid_until_the_best_rate_is_inside(tmp_path, mnist_root, capsys):
    # issue 19: full fine-tuning's chosen rate was the grid's lowest, and validation still rose below it.
    # A two-rate grid has no inside, so its chosen rate is always at an edge: the grid must grow.
    summary = tuning_run(tmp_path, "extend", "experiment.lrs=[1.0e-5, 2.0e-5]", "experiment.extend_grid=true",
                         "experiment.shared_lr=false")
    # the rates one, two and three steps past either edge, at the grid's ratio of 2
    beyond = {1e-5 / 2 ** k for k in (1, 2, 3)} | {2e-5 * 2 ** k for k in (1, 2, 3)}
    for name, result in summary["tuning"].items():
        assert 1 <= len(result["extended"]) <= 3 and all(
            any(rate == pytest.approx(other) for other in beyond) for rate in result["extended"])
        assert result["grid"] == sorted([1e-5, 2e-5, *result["extended"]])
        accuracy = {float(rate): value for rate, value in result["validation_accuracy"].items()}
        assert result["lr"] == choose_rate(accuracy) and set(accuracy) == set(result["grid"])
        assert result["edge"] is None or len(result["extended"]) == 3  # stopped inside, or after 3 steps
        assert all(len(values) == 2 for values in result["validation_accuracies"].values())  # per tuning seed
    assert "Extended past the grid's edge (experiment.extend_grid)" in capsys.readouterr().out
    sensitivity = summary["rate_sensitivity"]["dora - lora"]
    assert set(sensitivity) == set(summary["tuning"]["dora"]["validation_accuracy"]) & set(
        summary["tuning"]["lora"]["validation_accuracy"])
    without = tuning_run(tmp_path, "no_extend", "experiment.lrs=[1.0e-5, 2.0e-5]", "experiment.shared_lr=false")
    assert all(result["extended"] == [] and result["edge"] for result in without["tuning"].values())
    assert (tmp_path / "extend" / "rate_sensitivity.png").exists()


def test_dora_minus_lora_at_every_rate_is_paired_by_tuning_seed():
    tuning = {"dora": {"validation_accuracies": {"0.001": [90.0, 91.0, 92.5], "0.01": [80.0, None, 85.0]}},
              "lora": {"validation_accuracies": {"0.001": [89.0, 91.0, 92.0], "0.01": [81.0, 70.0, 82.0],
                                                 "0.1": [10.0, 10.0, 10.0]}}}
    rows = rate_sensitivity(tuning, [("dora", "lora")])["dora - lora"]
    assert list(rows) == ["0.001", "0.01"]  # only the rates both trained at
    low = paired_difference([90.0, 91.0, 92.5], [89.0, 91.0, 92.0])
    assert rows["0.001"]["mean"] == pytest.approx(0.5) and rows["0.001"]["ci95"] == pytest.approx(list(low.ci95))
    assert rows["0.01"]["n"] == 2 and rows["0.01"]["mean"] == pytest.approx(1.0)  # the diverged seed left out
    assert rows["0.01"]["dora"] == pytest.approx(82.5) and rows["0.01"]["lora"] == pytest.approx(81.5)
