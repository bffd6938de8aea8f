"""experiment.launcher: ray trains each population as a Ray task and gives the local launcher's bits;
without the ray package, or with a cluster that cannot be joined, the run stops in one line."""

import importlib.util
import json
import signal
import subprocess
import sys
import types

import pytest
import torch

from conftest import REPO, smoke, summary_of
from loradora.config import ConfigError, load_config

HAS_RAY = importlib.util.find_spec("ray") is not None


def run(tmp_path, mnist_root, name, *overrides) -> tuple[dict, list[dict]]:
    """A population run on 512 training and 200 test images; its summary and metrics records."""
    run = smoke(tmp_path, "data.train_subset=512", "data.test_subset=200", "finetune.epochs=1", "cache.enabled=false",
                "log.every_n_batches=2", *overrides, run_name=name)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return summary_of(run), records


def without_times(value):
    """``value`` without its measured seconds, the one thing two runs of the same config differ in."""
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if k not in ("seconds", "train_seconds", "config")}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def deterministic_lines(out: str) -> list[str]:
    """The printed lines that carry no time: phase headers, batch losses and test accuracies."""
    return [line for line in out.splitlines() if line.startswith("== ") or "| Batch" in line
            or ": test accuracy" in line]


# First in the file, before a Ray runtime starts: these replace the ray module, which its threads import from.
def test_without_the_ray_package_ray_is_one_line_and_no_run_folder(tmp_path, mnist_root, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    smoke(tmp_path, "experiment.seeds=[1, 2]", "experiment.launcher=ray", exit_code=2)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        "error: experiment.launcher: ray needs the ray package: pip install ray (or pip install -r "
        "requirements-dev.txt), or set experiment.launcher=local\n")
    assert list(tmp_path.iterdir()) == []


def test_a_cluster_that_cannot_be_joined_is_one_line_and_no_run_folder(tmp_path, mnist_root, capsys, monkeypatch):
    def init(**options):
        raise ConnectionError("Could not find any running Ray instance.\nPlease specify the one to connect to.")

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=init)
    monkeypatch.setitem(sys.modules, "ray", fake)
    smoke(tmp_path, "experiment.seeds=[1, 2]", "experiment.launcher=ray", "ray.address=auto", exit_code=2)
    assert capsys.readouterr().err == ("error: ray.address: cannot join Ray at auto: Could not find any running Ray "
                                       "instance. Please specify the one to connect to.\n")
    assert list(tmp_path.iterdir()) == []


def test_a_local_run_never_imports_ray(tmp_path, mnist_root):
    code = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
import dora_example
assert dora_example.main(["--config", {str(REPO / "configs" / "smoke.yaml")!r}, "data.root={mnist_root}",
                          "output.dir={tmp_path}", "data.train_subset=128", "data.test_subset=64",
                          "finetune.epochs=1", "experiment.seeds=[1, 2]", "cache.enabled=false"]) == 0
print("ray" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("False"), result.stdout[-500:]


@pytest.fixture(scope="module")
def ray_runtime():
    """One local Ray runtime for the module's runs (its start-up takes seconds); the runs reuse it."""
    if not HAS_RAY:
        pytest.skip("ray is not installed (pip install ray, or pip install -r requirements-dev.txt)")
    import ray

    from loradora.launcher import start_ray
    sigterm = signal.getsignal(signal.SIGTERM)
    start_ray(None, num_cpus=2)
    yield
    ray.shutdown()
    signal.signal(signal.SIGTERM, sigterm)  # ray.init's makes SIGTERM a SystemExit in whichever test runs


@pytest.mark.parametrize("overrides", [
    # the 2-seed smoke run, with adapter dropout (masks from the global RNG) and dM/dD trackers on
    ["experiment.seeds=[1, 2]", "lora.dropout=0.1", "analysis.every_n_batches=4"],
    # three seeds in populations of two: two tasks per phase, submitted at once, collected in order
    ["experiment.seeds=[1, 2, 3]", "experiment.population=2", "finetune.methods=[dora]", "dora.dropout=0.1"],
], ids=["2 seeds", "2 populations per phase"])
def test_ray_gives_the_local_launchers_results_bit_for_bit(tmp_path, mnist_root, capsys, ray_runtime, overrides):
    local, local_records = run(tmp_path, mnist_root, "local", *overrides)
    local_out = capsys.readouterr().out
    remote, remote_records = run(tmp_path, mnist_root, "ray", *overrides, "experiment.launcher=ray")
    remote_out = capsys.readouterr().out
    assert remote["status"] == local["status"] == "complete"
    assert remote["config"]["experiment"]["launcher"] == "ray"
    assert [r["seed"] for r in remote["runs"]] == [r["seed"] for r in local["runs"]]
    for ours, theirs in zip(remote["runs"], local["runs"]):  # per-seed accuracies, equal not close
        assert {m: r["test_accuracy"] for m, r in ours["methods"].items()} == \
            {m: r["test_accuracy"] for m, r in theirs["methods"].items()}
    assert without_times(remote["runs"]) == without_times(local["runs"])  # trackers' dM/dD included
    assert without_times(remote["methods"]) == without_times(local["methods"])
    assert without_times(remote_records) == without_times(local_records)  # every loss, in the same order
    assert deterministic_lines(remote_out) == deterministic_lines(local_out)
    assert sorted(path.name for path in (tmp_path / "ray").iterdir()) == \
        sorted(path.name for path in (tmp_path / "local").iterdir())  # plots and exports too


@pytest.mark.parametrize("override,message", [
    (["experiment.launcher=slurm"], "experiment.launcher: got 'slurm', allowed: one of local, ray"),
    (["experiment.launcher=ray"], "experiment.launcher: got 'ray', allowed: local for a run that trains one model"),
    (["experiment.launcher=ray", "experiment.seeds=[1, 2]", "experiment.population=1"],
     "experiment.launcher: got 'ray', allowed: local for a run that trains one model"),
    (["ray.address=localhost"], "ray.address: got 'localhost', allowed: null (start Ray on this machine), auto"),
    (["ray.address=ray://head"], "ray.address: got 'ray://head'"),
])
def test_bad_launcher_settings_name_the_key(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, override)
    assert message in str(error.value)


@pytest.mark.parametrize("address", ["auto", "10.0.0.5:6379", "ray://head-node:10001", "null"])
def test_cluster_addresses(address):
    config = load_config(None, ["experiment.launcher=ray", "experiment.seeds=[1, 2]", f"ray.address={address}"])
    assert config.ray.address == (None if address == "null" else address)
    assert load_config(None, ["experiment.launcher=ray", "data.validation_size=10", "experiment.lrs=[0.01]",
                        "experiment.tuning_seeds=[3]"])


def test_ray_trains_the_cells_of_a_map_side_by_side(tmp_path, mnist_root, ray_runtime):
    # A map is one plan: its cells' tuning jobs are ready at once, so Ray trains them together.
    from test_map import MAP
    from loradora.jobs import JobStore

    two_cells = [*MAP, "map.train_subsets=[200]", "finetune.steps=100"]  # jobs long enough to meet
    local = smoke(tmp_path, *two_cells, run_name="local")
    remote = smoke(tmp_path, *two_cells, "experiment.launcher=ray", run_name="ray")
    maps = [json.loads((folder / "map.json").read_text()) for folder in (local, remote)]
    assert maps[0]["answers"] == maps[1]["answers"] and len(maps[0]["cells"]) == 2
    store = JobStore(remote / "jobs")
    results = [store.load(path.stem, torch.device("cpu")) for path in sorted(store.folder.glob("*.pt"))]
    overlapping = {(a.cell, b.cell) for a in results for b in results
                   if a.cell and b.cell and a.cell != b.cell and a.started < b.finished and b.started < a.finished}
    assert overlapping, [(r.cell, r.stage, r.started, r.finished) for r in results]
