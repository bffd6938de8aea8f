"""The pretrained-base cache: what its key holds, and that a hit changes no result."""

import errno
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, smoke
from helpers import fail_writes, under
from loradora import cache
from loradora.cache import CacheDamaged, cache_dir, pretrain_key, read_cached, save_cached
from loradora.config import load_config
from loradora.data import Split
from loradora.model import MLP
from loradora.jobs import JobData, Output, run_job
from loradora.plan import Plan, Stamp

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


def test_save_then_read_restores_weights_and_records(tmp_path):
    model, records = MLP(), [{"kind": "epoch", "loss": 0.5, "batch_losses": [0.7, 0.3]}]
    path = tmp_path / "cache" / "key.pt"
    save_cached(path, model, records)
    fresh = MLP()
    assert read_cached(path, fresh).load_into(fresh) == records
    for saved, loaded in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(saved, loaded)


def damage(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":  # a full disk or an interrupted copy
        del data[len(data) // 2:]
    else:  # one flipped bit in the weights, which the zip archive does not check
        data[-len(data) // 3] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "bit flipped"])
def test_a_damaged_file_is_found_before_it_is_loaded(tmp_path, how):
    path = tmp_path / "key.pt"
    save_cached(path, MLP(), [])
    damage(path, how)
    with pytest.raises(CacheDamaged, match="checksum does not match"):
        read_cached(path, MLP())


def test_a_file_of_another_shape_is_damaged(tmp_path):
    save_cached(tmp_path / "key.pt", MLP([64, 256]), [])
    with pytest.raises(CacheDamaged, match="do not fit the model"):
        read_cached(tmp_path / "key.pt", MLP())


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
    monkeypatch.setattr(cache, "SOURCES", tuple(copy / path.name for path in cache.SOURCES))
    assert pretrain_key(load_config(), 1, CPU) == BASE_KEY  # an unedited copy is the same code
    model = copy / "model.py"
    model.write_text(model.read_text().replace("nn.ReLU()", "nn.Tanh()"))
    assert pretrain_key(load_config(), 1, CPU) != BASE_KEY


# Modules whose code runs while a base is pretrained but cannot change its weights, and why.
NOT_SHAPING = {
    "pipeline.py": "orchestration: which phases run, in which order, with settings that are in the key",
    "plan.py": "the job's members, whose seeds and population are in the key",
    "variants.py": "the phase's name, and the settings its result records",
    "experiment.py": "the phase's name, and the settings its result records",
    "adapters.py": "counts the trainable parameters for the result record",
    "run_folder.py": "names the machine a job ran on, for its result's record",
}


def test_the_sources_are_the_code_that_pretrains():
    # Regression: the key held the entry script, so editing a print statement retrained every base.
    ran = set()

    def note(frame, event, arg):
        if event == "call":
            ran.add(Path(frame.f_code.co_filename))

    generator = torch.Generator().manual_seed(0)
    split = lambda n: Split(torch.rand(n, 784, generator=generator), torch.randint(0, 10, (n,), generator=generator))  # noqa: E731
    mnist = JobData(split(256), split(64))
    for seeds in ("[1]", "[1, 2]"):  # one model, and a population
        config = load_config(None, ["pretrain.epochs=1", "cache.enabled=false", f"experiment.seeds={seeds}"])
        job, = Plan({"": config}, Stamp("code", torch.__version__, "cpu")).pretraining()
        sys.setprofile(note)
        try:
            run_job(job, config, mnist, Output(lambda metrics: None, lambda line: None))
        finally:
            sys.setprofile(None)
    package = {path.name for path in ran if path.parent == cache.PACKAGE}
    sources = {path.name for path in cache.SOURCES}
    assert package - sources - NOT_SHAPING.keys() == set()  # a module that shapes the weights is missing
    assert {"model.py", "training.py", "population.py", "phases.py", "jobs.py"} <= package & sources
    assert all(path.is_file() for path in cache.SOURCES) and "dora_example.py" not in sources


# Regression: a cached base cut to half its length stopped the next run with a 12-line traceback
# from torch.load.
@pytest.mark.parametrize("seeds,how", [("experiment.seeds=[1]", "truncated"), ("experiment.seeds=[1, 2]", "bit flipped")],
                         ids=["one model, truncated", "population, bit flipped"])
def test_a_damaged_base_is_said_retrained_and_replaced(tmp_path, mnist_root, capsys, how, seeds):
    first, first_losses = tiny_run(tmp_path, mnist_root, "first", seeds)
    files = sorted((tmp_path / ".pretrained_cache").glob("*.pt"))
    damage(files[-1], how)
    capsys.readouterr()
    again, again_losses = tiny_run(tmp_path, mnist_root, "again", seeds)
    captured = capsys.readouterr()
    assert captured.err == f"warning: cached base {files[-1]} is damaged (its checksum does not match: truncated " \
                           f"or changed since it was written); retraining\n"
    assert "reusing pretrained base" not in captured.out  # a population retrains every member with it
    runs = json.loads((tmp_path / "again" / "summary.json").read_text())["runs"]
    assert [run["methods"]["pretrained"]["cached"] for run in runs] == [False] * len(runs)
    accuracies = {name: result["test_accuracy"] for name, result in first.items()}
    assert {name: result["test_accuracy"] for name, result in again.items()} == accuracies
    assert again_losses == first_losses  # retrained: the same bits as the first run
    assert sorted((tmp_path / ".pretrained_cache").glob("*.pt")) == files
    tiny_run(tmp_path, mnist_root, "third", seeds)  # the file was replaced whole, and is used again
    assert capsys.readouterr().out.count("reusing pretrained base") == len(files)


def test_a_cache_folder_that_cannot_be_written_is_said_once_and_the_run_goes_on(tmp_path, mnist_root, capsys,
                                                                                monkeypatch):
    folder = tmp_path / ".pretrained_cache"
    fail_writes(monkeypatch, under(folder), errno.EROFS)  # read-only (chmod stops nothing as root)
    methods, _ = tiny_run(tmp_path, mnist_root, "r", "experiment.seeds=[1, 2]", "experiment.population=1")
    assert capsys.readouterr().err == f"warning: cannot write the pretrained-base cache in {folder} (Read-only " \
                                      f"file system); going on without caching\n"  # once, not per seed
    assert methods["dora"]["test_accuracies"] is not None and not folder.exists()
