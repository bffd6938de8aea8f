"""The whole experiment on real MNIST, through the command line, with configs/smoke.yaml."""

import json

import pytest
import torch
import yaml

import dora_example
from conftest import SMOKE, smoke, summary_of
from loradora.config import load_config
from loradora.phases import assert_unchanged
from loradora.results import result_fields


def test_smoke_run_writes_the_summary_schema(smoke_run):
    summary = summary_of(smoke_run)
    assert set(summary) >= {"methods", "config", "env", "runs", "seeds"} and summary["status"] == "complete"
    assert list(summary["methods"]) == ["pretrained", "lora", "dora"]
    for result in summary["methods"].values():
        assert list(result) == result_fields()  # every field of the record, null where it does not apply
        assert isinstance(result["test_accuracy"], float) and 0 <= result["test_accuracy"] <= 100
        assert result["test_accuracy"] == pytest.approx(100 * result["test_correct"] / result["n_test"])
        assert isinstance(result["trainable_params"], int) and isinstance(result["epochs"], int)
        assert isinstance(result["train_seconds"], float) and result["train_seconds"] > 0
    assert summary["methods"]["pretrained"]["trainable_params"] == 136_074
    assert summary["methods"]["dora"]["trainable_params"] - summary["methods"]["lora"]["trainable_params"] == 394
    assert set(summary["env"]) >= {"torch", "device", "git_commit"}
    assert summary["config"] == yaml.safe_load((smoke_run / "config.yaml").read_text())


def test_accuracy_is_over_the_whole_test_set(smoke_run):
    # One reference scored "test accuracy" on a single batch of 64 images.
    assert [m["n_test"] for m in summary_of(smoke_run)["methods"].values()] == [10_000] * 3


def test_smoke_run_logs_every_batch_record_and_epoch(smoke_run):
    records = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()]
    config = load_config(SMOKE)
    batches_per_epoch = -(-config.data.train_subset // config.pretrain.batch_size)
    logged_per_epoch = -(-batches_per_epoch // config.log.every_n_batches)
    for phase, epochs in [("pretrained", config.pretrain.epochs), ("lora", config.finetune.epochs),
                          ("dora", config.finetune.epochs)]:
        kinds = [r["kind"] for r in records if r["phase"] == phase]
        assert kinds.count("batch") == epochs * logged_per_epoch
        assert kinds.count("epoch") == epochs and kinds.count("test") == 1


def test_same_seed_gives_identical_results(tmp_path, smoke_run):
    again = smoke(tmp_path, "data.test_subset=null")
    first, second = (summary_of(run)["methods"] for run in (smoke_run, again))
    for method in first:
        assert first[method]["test_accuracy"] == second[method]["test_accuracy"]
    losses = [[json.loads(line).get("loss") for line in (run / "metrics.jsonl").read_text().splitlines()]
              for run in (smoke_run, again)]
    assert losses[0] == losses[1]


def test_overrides_reach_the_run_and_its_config(tmp_path, mnist_root):
    run = smoke(tmp_path, "lora.rank=8", "dora.alpha=16", "finetune.epochs=1")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["lora"]["rank"] == 8 and saved["dora"]["alpha"] == 16.0
    methods = summary_of(run)["methods"]
    assert methods["lora"]["rank"] == 8 and methods["lora"]["trainable_params"] == 8 * (912 + 384 + 266)
    assert methods["dora"]["alpha"] == 16.0 and methods["dora"]["s"] == 4.0


def test_an_existing_run_folder_is_never_overwritten(tmp_path, mnist_root, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "summary.json").write_text("{}")
    argv = ["--config", str(SMOKE), f"output.dir={tmp_path}", "output.run_name=taken"]
    assert dora_example.main(argv) == 2
    assert "exists already" in capsys.readouterr().err
    assert (tmp_path / "taken" / "summary.json").read_text() == "{}"


def test_frozen_weights_are_checked_after_fine_tuning():
    model = torch.nn.Linear(3, 2)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters()}
    assert_unchanged(model, frozen, "lora")
    with torch.no_grad():
        model.weight[0, 0] += 1e-7
    with pytest.raises(RuntimeError, match="changed frozen weights: weight"):
        assert_unchanged(model, frozen, "lora")
