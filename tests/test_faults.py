"""Bad input and faults: each gets a clear one-line error, the right exit code, and loses nothing.

Most cases run the real command line in-process (dora_example.main, as `python dora_example.py`
would); the exit-code, traceback and Ctrl-C cases start a real process.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import dora_example
from conftest import REPO, smoke, summary_of
from helpers import fail_writes, named
from loradora.data import MD5, DataUnavailable, load_mnist
from loradora.files import WriteFailed, write_json

SMOKE = str(REPO / "configs" / "smoke.yaml")
HAS_RAY = importlib.util.find_spec("ray") is not None


def cli(tmp_path, *args, config=SMOKE):
    """Run the CLI with results under tmp_path/out; returns the exit code."""
    return dora_example.main(["--config", str(config), f"output.dir={tmp_path / 'out'}", *args])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("override,message", [
    ("lora.rnak=8", "unknown key lora.rnak; did you mean lora.rank?"),
    ("finetune.epoch=3", "did you mean finetune.epochs?"),
    ("lora.rank=four", "lora.rank: expected an integer, got 'four'"),
    ("lora.rank=0", "lora.rank: got 0, allowed: an integer >= 1"),
    ("dora.rank=129", "dora.rank: got 129, allowed: an integer from 1 to 128 for this model"),
    ("lora.alpha=0", "lora.alpha: got 0.0, allowed: a finite number > 0"),
    ("finetune.lr=-1", "finetune.lr: got -1.0, allowed: a finite number > 0"),
    ("pretrain.lr=inf", "pretrain.lr: got inf, allowed: a finite number"),
    ("pretrain.epochs=-1", "pretrain.epochs: got -1, allowed: an integer >= 0"),
    ("finetune.batch_size=0", "finetune.batch_size: got 0, allowed: an integer >= 1"),
    ("finetune.methods=[lora,qlora]", "finetune.methods: got ['lora', 'qlora'], allowed: a list drawn from lora, dora"),
    ("dora.scaling=linear", "dora.scaling: got 'linear', allowed: one of standard, rslora, alpha"),
    ("device=tpu", "device: got 'tpu', allowed: auto, cpu, cuda, cuda:N"),
    ("output.run_name=../escaped", "output.run_name: got '../escaped', allowed: null or a folder name"),
    ("output.run_name=/tmp/abs", "output.run_name: got '/tmp/abs'"),
])
def test_bad_values_stop_before_any_work(tmp_path, capsys, override, message):
    assert cli(tmp_path, override) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "out").exists() and not (tmp_path / "escaped").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it(tmp_path, capsys):
    assert cli(tmp_path, "device=cuda") == 2
    assert "no CUDA GPU" in one_line_error(capsys)


@pytest.mark.parametrize("text,message", [
    ("lora:\n  rank: 4\n  alpha: [8\n", "bad.yaml:4:1: not valid YAML"),
    ("lora:\n\trank: 4\n", "bad.yaml:2:1: not valid YAML"),
    ("", "bad.yaml: the config file is empty"),
    ("- lora\n- dora\n", "bad.yaml: the top level must be a mapping of keys, got list"),
    ("lora: 4\n", "lora: is a section"),
])
def test_bad_config_files_are_named_with_their_line(tmp_path, capsys, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    assert cli(tmp_path, config=tmp_path / "bad.yaml") == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_missing_config_file(tmp_path, capsys):
    assert cli(tmp_path, config=tmp_path / "nope.yaml") == 2
    assert "cannot read config file" in one_line_error(capsys) and not (tmp_path / "out").exists()


def test_a_real_process_exits_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "dora_example.py"), "lora.rank=-3",
                             f"output.dir={tmp_path / 'out'}"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == "error: lora.rank: got -3, allowed: an integer >= 1"
    assert not (tmp_path / "out").exists()


def test_an_output_folder_that_cannot_be_made(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert dora_example.main(["--config", SMOKE, f"output.dir={tmp_path / 'file' / 'results'}"]) == 2
    assert "cannot create a run folder in" in one_line_error(capsys)


def test_no_data_and_no_download_says_where_to_put_the_files(tmp_path, capsys):
    code = cli(tmp_path, f"data.root={tmp_path / 'empty'}", "data.download=false", "output.run_name=r")
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert str(tmp_path / "empty" / "MNIST" / "raw") in err
    for name, md5 in MD5.items():
        if name.endswith(".gz"):
            assert f"{name}  MD5 {md5}" in err
    assert list((tmp_path / "out").iterdir()) == []  # nothing was trained: no run folder is left behind


@pytest.mark.parametrize("name", ["t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte"])
def test_a_damaged_file_is_named_not_used(tmp_path, mnist_root, name):
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(mnist_root / "MNIST" / "raw", raw)
    os.chmod(raw / name, 0o644)
    data = bytearray((raw / name).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    (raw / name).write_bytes(bytes(data))
    with pytest.raises(DataUnavailable, match=f"{raw / name} is damaged or truncated"):
        load_mnist(tmp_path, train=False, download=False)


def test_a_truncated_download_is_named(tmp_path, mnist_root, capsys):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MD5:
        if name.endswith(".gz"):
            shutil.copy(mnist_root / "MNIST" / "raw" / name, raw / name)
    os.chmod(raw / "train-images-idx3-ubyte.gz", 0o644)
    with open(raw / "train-images-idx3-ubyte.gz", "r+b") as file:
        file.truncate(1000)
    assert cli(tmp_path, f"data.root={tmp_path}", "data.download=false") == 1
    assert "train-images-idx3-ubyte.gz is damaged or truncated" in capsys.readouterr().err
    assert list((tmp_path / "out").iterdir()) == []  # the timestamped run folder is removed again


def test_results_files_are_replaced_whole(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_json(path, {"done": 1})
    assert path.stat().st_mode & 0o777 == 0o644  # readable by others, as a results file should be

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(WriteFailed, match=f"cannot write {path}: disk full"):
        write_json(path, {"done": 2})
    assert json.loads(path.read_text()) == {"done": 1}
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def tiny(tmp_path, *overrides, exit_code: int = 0) -> Path:
    """The smoke run on 512 training and 200 test images, one fine-tuning epoch, the cache off."""
    return smoke(tmp_path, "data.train_subset=512", "data.test_subset=200", "finetune.epochs=1",
                 "cache.enabled=false", *overrides, exit_code=exit_code)


# Regression: a full disk used to end the run in a traceback from whichever write hit it.
@pytest.mark.parametrize("filename,after,status", [
    ("summary.json", 2, "running"),       # the third save fails: the second, after LoRA, is what stays
    ("metrics.jsonl", 5, "write failed"),
    ("config.yaml", 0, "write failed"),
    ("lora.safetensors", 0, "write failed"),  # the adapter file
    ("pretrained.safetensors", 0, "write failed"),
    ("loss_curves.png", 0, "complete"),   # the results are whole; the plots can be drawn again
])
def test_a_failed_write_is_one_line_and_the_last_summary_stays_readable(tmp_path, mnist_root, capsys, monkeypatch,
                                                                          filename, after, status):
    fail_writes(monkeypatch, named(filename), after=after)
    run = tiny(tmp_path, exit_code=1)
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"error: cannot write {run}/") and f"{filename}: No space left on device" in err
    summary = summary_of(run)  # readable: every write is atomic
    assert summary["status"] == status
    if filename == "summary.json":
        assert list(summary["methods"]) == ["pretrained", "lora"] and "as last saved, not marked" in err
    else:
        assert str(run / "summary.json") in err


# When a phase diverges (training.train raises Diverged; tests/test_training.py), the run goes on:


def test_a_diverging_method_is_stopped_and_the_others_run(tmp_path, mnist_root):
    # With alpha = 1e6 LoRA's update is 2.5e5 * B@A and the loss explodes; DoRA renormalises the
    # direction and keeps the magnitude, so it trains on.
    summary = summary_of(smoke(tmp_path, "lora.alpha=1.0e6", "dora.alpha=1.0e6", "finetune.epochs=1"))
    lora, dora = summary["methods"]["lora"], summary["methods"]["dora"]
    assert summary["status"] == "complete"
    assert lora["diverged"] and "max_loss" in lora["error"] and lora["test_accuracy"] is None
    assert lora["train_seconds"] is None and lora["n_test"] == 1000
    assert not dora["diverged"] and dora["test_accuracy"] > 20 and dora["n_test"] == 1000


def test_a_diverged_pretraining_stops_the_run(tmp_path, mnist_root):
    summary = summary_of(smoke(tmp_path, "pretrain.lr=1.0e3", exit_code=1))
    assert summary["status"] == "pretraining diverged" and list(summary["methods"]) == ["pretrained"]


def stop_midway(tmp_path, mnist_root, signum, *overrides, when=lambda line: line.startswith(FINE_TUNING)):
    """Run the CLI as a real process, send it ``signum`` at the first printed line that ``when``
    accepts, and return (exit code, stderr, run folder).

    The child starts with both stop signals at their defaults: a suite started as a background job
    (``pytest &``) runs with SIGINT ignored, which its children would inherit. A child that does not
    end within two minutes is killed, so a stop that is not honoured fails the test, not the suite.
    """
    command = [sys.executable, str(REPO / "dora_example.py"), "--config", SMOKE, f"data.root={mnist_root}",
               f"output.dir={tmp_path}", "output.run_name=r", "finetune.epochs=1000", *overrides]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=default_stop_signals)
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    try:
        for line in process.stdout:
            if when(line):
                process.send_signal(signum)
                break
        _, err = process.communicate()
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, err, tmp_path / "r"


FINE_TUNING = "Epoch: 001/1000 | Batch 010"  # well into LoRA's fine-tuning (pretraining has other epochs)


def default_stop_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


def assert_interrupted(run, err: str, signal_name: str, seeds: int = 1) -> None:
    """Stopped in LoRA's fine-tuning: the pretraining is kept, the summary marked, one line said."""
    assert f"interrupted by {signal_name}: finished phases are in {run / 'summary.json'}, marked interrupted" in err
    assert "Traceback" not in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert list(summary["methods"]) == ["pretrained"] and summary["methods"]["pretrained"]["n_test"] == 1000
    assert len(summary["runs"]) == seeds
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r["phase"] == "lora" for r in records)  # what ran before the stop is kept


def test_ctrl_c_keeps_finished_phases(tmp_path, mnist_root):
    code, err, run = stop_midway(tmp_path, mnist_root, signal.SIGINT)
    assert code == 130, err[-2000:]
    assert_interrupted(run, err, "SIGINT")


# Regression: SIGTERM, what Slurm, Kubernetes and `timeout` send, ended the run at once and left
# summary.json "running" for ever.
def test_sigterm_keeps_finished_phases(tmp_path, mnist_root):
    code, err, run = stop_midway(tmp_path, mnist_root, signal.SIGTERM)
    assert code == 143, err[-2000:]
    assert_interrupted(run, err, "SIGTERM")


def test_sigterm_in_a_population_keeps_finished_phases(tmp_path, mnist_root):
    code, err, run = stop_midway(tmp_path, mnist_root, signal.SIGTERM, "experiment.seeds=[1, 2]")
    assert code == 143, err[-2000:]
    assert_interrupted(run, err, "SIGTERM", seeds=2)


@pytest.mark.skipif(not HAS_RAY, reason="ray is not installed (pip install -r requirements-dev.txt)")
def test_sigterm_with_ray_ends_cleanly_and_leaves_no_ray_process(tmp_path, mnist_root):
    # ray.init makes SIGTERM raise SystemExit on the driver, which skipped the run's bookkeeping. A Ray
    # job's lines arrive with its result, so the stop comes when LoRA's job is sent.
    before = ray_processes()
    code, err, run = stop_midway(tmp_path, mnist_root, signal.SIGTERM, "experiment.seeds=[1, 2]",
                                 "experiment.launcher=ray", when=lambda line: line.startswith("ray: lora sent"))
    assert code == 143, err[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and list(summary["methods"]) == ["pretrained"]
    assert "interrupted by SIGTERM" in err
    # ray.shutdown ends the runtime the run started; its workers notice and exit within moments
    deadline = time.monotonic() + 60
    while ray_processes() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes() - before, sorted(ray_processes() - before)


def ray_processes() -> set[tuple[int, str]]:
    """(pid, command line) of every running process of a Ray runtime: its servers and its workers."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # not a process, or one that has just ended
            continue
        if any(mark in command for mark in ("raylet", "gcs_server", "default_worker.py", "ray::", "ray/dashboard")):
            found.add((int(entry.name), command[:200]))
    return found


def test_deterministic_mode_runs_and_repeats(tmp_path, mnist_root):
    try:
        for name in ("a", "b"):
            assert cli(tmp_path, f"data.root={mnist_root}", "deterministic=true", "finetune.methods=[dora]",
                       "cache.enabled=false", f"output.run_name={name}") == 0  # both runs train
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    a, b = ({method: {k: v for k, v in result.items() if k != "train_seconds"}
             for method, result in json.loads((tmp_path / "out" / n / "summary.json").read_text())["methods"].items()}
            for n in "ab")
    assert a == b and list(a) == ["pretrained", "dora"]
