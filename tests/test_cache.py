"""The pretrained-base cache: what its key holds, and that a hit changes no result."""

import json
import shutil

import pytest
import torch

from conftest import REPO, smoke
from loradora import cache
from loradora.cache import cache_dir, load_pretrained, pretrain_key, save_cached
from loradora.config import load_config
from loradora.model import MLP

CPU = torch.device("cpu")
BASE_KEY = pretrain_key(load_config(), 1, CPU)


@pytest.mark.parametrize("override", [
    "pretrain.lr=1e-3", "pretrain.epochs=2", "pretrain.batch_size=128",
    "model.hidden_sizes=[64, 256]", "data.train_subset=2048",
])
def test_a_pretraining_change_misses(override):
    assert pretrain_key(load_config(None, [override]), 1, CPU) != BASE_KEY


def test_another_seed_misses():
    assert pretrain_key(load_config(), 2, CPU) != BASE_KEY


def test_another_thread_count_misses():
    # 1 and 2 threads sum in different orders: the weights would differ in their last bits.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert pretrain_key(load_config(), 1, CPU) != BASE_KEY
    finally:
        torch.set_num_threads(threads)
    assert pretrain_key(load_config(), 1, CPU) == BASE_KEY


@pytest.mark.parametrize("override", [
    "lora.rank=8", "dora.alpha=16", "lora.scaling=rslora", "finetune.epochs=5", "finetune.lr=1e-3",
    "finetune.methods=[full]", "finetune.task=rotate", "experiment.ranks=[1, 2]", "data.test_subset=100",
    "analysis.every_n_batches=null", "output.run_name=other", "log.every_n_batches=1", "data.root=elsewhere",
])
def test_a_fine_tuning_or_reporting_change_hits(override):
    assert pretrain_key(load_config(None, [override]), 1, CPU) == BASE_KEY


def test_the_cache_lives_under_the_output_folder_unless_told(tmp_path):
    assert cache_dir(load_config(None, [f"output.dir={tmp_path}"])) == tmp_path / ".pretrained_cache"
    assert cache_dir(load_config(None, [f"cache.dir={tmp_path / 'c'}"])) == tmp_path / "c"


def test_save_then_load_restores_weights_and_records(tmp_path):
    model, records = MLP(), [{"kind": "epoch", "loss": 0.5, "batch_losses": [0.7, 0.3]}]
    path = tmp_path / "cache" / "key.pt"
    save_cached(path, model, records)
    fresh = MLP()
    assert load_pretrained(path, fresh) == records
    for saved, loaded in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(saved, loaded)
    untouched = MLP()
    before = [p.clone() for p in untouched.parameters()]
    assert load_pretrained(tmp_path / "missing.pt", untouched) is None
    assert all(torch.equal(a, b) for a, b in zip(before, untouched.parameters()))


def tiny_run(tmp_path, mnist_root, name, *overrides):
    """The pipeline on 512 training images; returns its methods and every logged loss."""
    run = smoke(tmp_path, "data.train_subset=512", "data.test_subset=200", "finetune.epochs=1",
                "analysis.every_n_batches=null", *overrides, run_name=name)
    losses = {}
    for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        losses.setdefault(record["phase"], []).append(record.get("loss"))
    return json.loads((run / "summary.json").read_text())["methods"], losses


def test_a_fine_tuning_change_reuses_the_base_and_a_pretraining_change_does_not(tmp_path, mnist_root, capsys):
    first, first_losses = tiny_run(tmp_path, mnist_root, "first")
    assert "reusing pretrained base" not in capsys.readouterr().out
    assert len(list((tmp_path / ".pretrained_cache").glob("*.pt"))) == 1

    rank8, rank8_losses = tiny_run(tmp_path, mnist_root, "rank8", "lora.rank=8")
    assert f"reusing pretrained base from {tmp_path / '.pretrained_cache'}" in capsys.readouterr().out
    assert rank8["pretrained"]["cached"] is True and rank8["lora"]["rank"] == 8
    # A hit is invisible in the results: what the rank change did not touch is bit-identical.
    for phase in ("pretrained", "dora"):
        assert rank8[phase]["test_accuracy"] == first[phase]["test_accuracy"]
        assert rank8_losses[phase] == first_losses[phase]

    tiny_run(tmp_path, mnist_root, "lr", "pretrain.lr=1e-3")
    assert "reusing pretrained base" not in capsys.readouterr().out
    tiny_run(tmp_path, mnist_root, "off", "cache.enabled=false")
    assert "reusing pretrained base" not in capsys.readouterr().out
    assert len(list((tmp_path / ".pretrained_cache").glob("*.pt"))) == 2  # first and lr; off wrote none


def test_an_edit_to_the_code_that_pretrains_misses(tmp_path, monkeypatch):
    # The case: ReLU changed to Tanh in model.py used to hit and load the ReLU-trained weights.
    copy = tmp_path / "loradora"
    shutil.copytree(REPO / "loradora", copy)
    shutil.copy(REPO / "dora_example.py", tmp_path / "dora_example.py")
    monkeypatch.setattr(cache, "SOURCES", tuple(copy.parent / path.relative_to(REPO) for path in cache.SOURCES))
    assert pretrain_key(load_config(), 1, CPU) == BASE_KEY  # an unedited copy is the same code
    model = copy / "model.py"
    model.write_text(model.read_text().replace("nn.ReLU()", "nn.Tanh()"))
    assert pretrain_key(load_config(), 1, CPU) != BASE_KEY


def test_the_sources_are_the_code_that_pretrains():
    assert {path.name for path in cache.SOURCES} >= {"model.py", "training.py", "data.py", "dora_example.py"}
    assert all(path.is_file() for path in cache.SOURCES)
