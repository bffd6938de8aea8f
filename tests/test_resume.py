"""Long runs resume (issue 29): the plan of jobs is pure, every job's result is kept under its key,
and a stopped run continues with the jobs it had not finished, to the summary an uninterrupted run
writes. A damaged result trains again; a second process is refused, a killed one's lock is not."""

import json
import os
import signal
import subprocess
import sys
import textwrap


from conftest import REPO, SMOKE, smoke, summary_of

# A tuned run in miniature: 2 compared seeds, 2 tuning seeds, a grid of 2 rates that is extended,
# LoRA and DoRA at 2 ranks; a few seconds.
TUNED = ["data.train_subset=768", "data.test_subset=300", "data.validation_size=256", "finetune.epochs=1",
         "experiment.seeds=[1, 2]", "experiment.tuning_seeds=[3, 4]", "experiment.lrs=[0.003, 0.01]",
         "experiment.extend_grid=true", "experiment.ranks=[2, 4]", "analysis.every_n_batches=4",
         "lora.dropout=0.1", "cache.enabled=false"]


def without_times(value):
    """``value`` less what the clock decides (seconds) and where it came from (kept, cached)."""
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if k not in ("seconds", "train_seconds", "cached", "jobs")}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def stop_at(tmp_path, pattern: str, *overrides, name: str = "stopped") -> subprocess.CompletedProcess:
    """The CLI as a real process, sent SIGTERM at the first printed line holding ``pattern``."""
    command = [sys.executable, str(REPO / "dora_example.py"), "--config", str(SMOKE), f"data.root={REPO / 'data'}",
               f"output.dir={tmp_path}", f"output.run_name={name}", *overrides]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"},
                               preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    try:
        for line in process.stdout:
            if pattern in line:
                process.send_signal(signal.SIGTERM)
                break
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def resume(folder, *arguments: str, exit_code: int = 0) -> None:
    import dora_example

    assert dora_example.main(["--resume", str(folder), *arguments]) == exit_code


# ---- the plan ----


def test_the_plan_is_pure_and_imports_no_torch():
    # The same config and results give the same jobs, in a process that never imports torch.
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(REPO)!r})
        from loradora.config import load_config
        from loradora.plan import Plan, Stamp
        config = load_config(None, {TUNED!r})
        plan = Plan({{"": config}}, Stamp("code", "2.x", "cpu"))
        first, again = plan.ready({{}}), plan.ready({{}})
        assert first == again
        progress = {{job.key: () for job in first}}
        tuning = plan.ready(progress)
        print(json.dumps({{"pretrain": [job.stage for job in first], "tune": [job.stage for job in tuning],
                          "torch": "torch" in sys.modules}}))
    """)
    result = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                       check=True).stdout)
    assert result == {"pretrain": ["pretrain"], "tune": ["tune"] * 2, "torch": False}


def test_the_plan_extends_the_grid_then_fine_tunes_at_the_chosen_rates():
    from loradora.config import load_config
    from loradora.plan import Plan, Stamp

    config = load_config(None, TUNED)
    plan = Plan({"": config}, Stamp("code", "2.x", "cpu"))
    progress = {job.key: () for job in plan.pretraining()}
    grid = plan.ready(progress)
    assert {(m.variant.name, m.lr) for job in grid for m in job.members} == {
        (name, lr) for name in ("lora_r2", "lora_r4", "dora_r2", "dora_r4") for lr in (0.003, 0.01)}
    # Every variant best at 0.01, the grid's top edge, except lora_r2: one more rate past it, 0.0333333
    for job in grid:
        progress[job.key] = [90.0 + 5 * (m.lr == 0.01) * (m.variant.name != "lora_r2") for m in job.members]
    extension = plan.ready(progress)
    assert {(m.variant.name, m.lr) for job in extension for m in job.members} == {
        (name, 0.0333333) for name in ("lora_r4", "dora_r2", "dora_r4")} | {("lora_r2", 0.0009)}
    assert plan.tuning("", progress) is None and plan.finetuning("", progress) == []
    for job in extension:
        progress[job.key] = [80.0] * len(job.members)  # worse past the edge: the search ends
    compared = plan.ready(progress)
    assert plan.rates("", progress) == {"lora_r2": 0.003, "lora_r4": 0.01, "dora_r2": 0.01, "dora_r4": 0.01}
    assert {(m.variant.name, m.lr, m.seed) for job in compared for m in job.members} >= {
        ("lora_r2", 0.003, 1), ("lora_r2", 0.003, 2), ("dora_r4@shared", 0.005, 2)}
    for job in compared:
        progress[job.key] = ()
    assert plan.ready(progress) == []
    # keys name what shapes the results: a new rate grid is new jobs, the verdict's margin is not
    assert plan.ready({})[0].key == Plan({"": load_config(None, TUNED + ["experiment.margin=0.2"])},
                                        Stamp("code", "2.x", "cpu")).ready({})[0].key
    assert Plan({"": config}, Stamp("other code", "2.x", "cpu")).ready({})[0].key != plan.ready({})[0].key


# ---- resuming ----


def test_a_run_stopped_in_tuning_resumes_to_the_uninterrupted_summary(tmp_path, mnist_root, capsys):
    whole = smoke(tmp_path, *TUNED, run_name="whole")
    stopped = stop_at(tmp_path, "== dora_r2@lr=0.003, dora_r2@lr=0.01", *TUNED)  # LoRA's tuning job done
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert f"--resume {tmp_path / 'stopped'}" in stopped.stderr  # the stop says how to continue
    capsys.readouterr()
    resume(tmp_path / "stopped")
    out = capsys.readouterr().out
    assert "resuming" in out and "2 job results kept" in out  # the pretraining and LoRA's tuning
    kept = json.loads((tmp_path / "stopped" / "summary.json").read_text())["jobs"]
    assert kept["kept"] == 2 and kept["trained"] == kept["total"] - 2 and f"{kept['trained']} trained now" in out
    again, first = summary_of(tmp_path / "stopped"), summary_of(whole)
    assert again["status"] == "complete"
    assert without_times(again["runs"]) == without_times(first["runs"])  # every accuracy, equal not close
    assert again["tuning"] == first["tuning"]                              # the chosen rates
    assert again["comparisons"] == first["comparisons"]                    # the intervals
    # metrics.jsonl holds the uninterrupted run's records, none twice
    assert without_times(records(tmp_path / "stopped")) == without_times(records(whole))


def test_a_damaged_result_trains_that_job_again(tmp_path, mnist_root, capsys):
    run = smoke(tmp_path, "data.train_subset=512", "data.test_subset=200", "finetune.epochs=1", "cache.enabled=false",
                "experiment.seeds=[1, 2]")  # a seeded run: 3 jobs, each a population of 2
    before = summary_of(run)
    damaged = sorted((run / "jobs").glob("*.pt"))[1]
    data = bytearray(damaged.read_bytes())
    data[-100] ^= 0xFF  # a flipped bit
    damaged.write_bytes(bytes(data))
    capsys.readouterr()
    resume(run)
    captured = capsys.readouterr()
    assert f"job result {damaged} is damaged (its checksum does not match" in captured.err
    assert "jobs: 1 trained now, 2 kept from before" in captured.out
    assert without_times(summary_of(run)["runs"]) == without_times(before["runs"])


def test_a_second_process_is_refused_and_a_killed_ones_lock_is_not_stale(tmp_path, mnist_root, capsys):
    run = smoke(tmp_path, "data.train_subset=512", "data.test_subset=200", "finetune.epochs=1")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from loradora.pipeline import acquire
        lock = acquire(Path({str(run)!r}))  # held while this process lives
        print("locked", flush=True)
        time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        resume(run, exit_code=2)
        assert f"error: {run} is in use by process {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()  # SIGKILL: it leaves its lock file behind, but not the lock
        holder.wait()
    assert (run / ".lock").exists()
    resume(run)
    assert "jobs: 0 trained now, 3 kept from before" in capsys.readouterr().out


def test_resuming_refuses_other_settings_and_asks_before_another_machine(tmp_path, mnist_root, capsys):
    run = smoke(tmp_path, "data.train_subset=512", "data.test_subset=200", "finetune.epochs=1")
    capsys.readouterr()
    resume(run, "lora.rank=8", exit_code=2)
    assert "the run was started with other settings (lora.rank: 4 -> 8)" in capsys.readouterr().err
    smoke(tmp_path, "data.train_subset=512", exit_code=2)  # the name is taken: the error says how to resume
    assert f"--resume {run}" in capsys.readouterr().err

    stamp_file = run / "jobs" / "stamp.json"
    stamp = json.loads(stamp_file.read_text())
    stamp_file.write_text(json.dumps({**stamp, "torch": "1.0"}))
    resume(run, exit_code=2)
    assert "its jobs were trained with other torch 1.0 then" in capsys.readouterr().err
    stamp_file.write_text(json.dumps({**stamp, "device_name": "Another CPU", "threads": 7}))
    resume(run, exit_code=2)
    assert "add --other-machine to continue" in capsys.readouterr().err
    resume(run, "--other-machine")
    assert summary_of(run)["jobs"]["ran_on"][0]["threads"] == stamp["threads"]


def test_a_stopped_map_resumes_to_the_uninterrupted_map(tmp_path, mnist_root, capsys):
    from test_map import MAP

    whole = smoke(tmp_path, *MAP, run_name="whole")
    stopped = stop_at(tmp_path, "rotate90_n200: lora_r1, lora_r4", *MAP, "data.root=" + str(REPO / "data"))
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    capsys.readouterr()
    resume(tmp_path / "stopped")
    assert "jobs: " in capsys.readouterr().out
    again, first = (json.loads((folder / "map.json").read_text()) for folder in (tmp_path / "stopped", whole))
    assert again["answers"] == first["answers"] and again["cells"] == first["cells"]
    for cell in first["cells"]:
        assert without_times(records(tmp_path / "stopped" / cell)) == without_times(records(whole / cell))
