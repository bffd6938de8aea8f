"""The command line: it answers before torch loads, and its paths mean what a user expects."""

import subprocess
import sys

import pytest

import dora_example
from conftest import REPO
from loradora.config import ConfigError, load_config

HEAVY = ("torch", "torchvision", "matplotlib", "ray")


def test_arguments_and_config_are_checked_without_importing_torch():
    # A fresh interpreter: this one has torch loaded already.
    code = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
import dora_example
from loradora.config import load_config
args = dora_example.parse_args(["--config", {str(REPO / "configs" / "smoke.yaml")!r}, "lora.rank=8"])
load_config(args.config, args.overrides, project=dora_example.PROJECT)
assert dora_example.main(["lora.rank=0"]) == 2
try:
    dora_example.parse_args(["--help"])
except SystemExit:
    pass
print(sorted(name for name in sys.modules if name.split(".")[0] in {HEAVY!r}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("[]"), result.stdout


def test_help_states_the_path_rule(capsys):
    with pytest.raises(SystemExit):
        dora_example.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "relative to the current folder" in text and "relative to the project folder" in text


def test_paths_on_the_command_line_are_relative_to_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("cache:\n  dir: cached\n")
    args = dora_example.parse_args(["--config", "mine.yaml", "data.root=d", "output.dir=../out"])
    config = load_config(args.config, args.overrides, project=REPO)
    assert config.data.root == str(tmp_path / "d") and config.output.dir == str(tmp_path / ".." / "out")
    assert config.cache.dir == str(REPO / "cached")  # written in a config file: the project's


def test_the_defaults_are_the_projects_wherever_the_script_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(dora_example.parse_args([]).config, [], project=REPO)
    assert (config.data.root, config.output.dir, config.cache.dir) == (str(REPO / "data"), str(REPO / "results"), None)
    assert load_config(None, ["output.dir=/abs"], project=REPO).output.dir == "/abs"


def test_a_project_relative_config_path_from_elsewhere_gets_a_hint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=f"did you mean {REPO / 'configs' / 'smoke.yaml'}"):
        load_config("configs/smoke.yaml", [], project=REPO)


def test_a_run_started_elsewhere_reads_and_writes_the_project_folders(tmp_path, monkeypatch, capsys):
    # The run stops on missing MNIST before training: its message shows where data/ was looked for,
    # and results/ shows where the run folder was made (and removed again, since nothing was trained).
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(dora_example, "PROJECT", project)
    assert dora_example.main(["--config", str(REPO / "configs" / "smoke.yaml"), "data.download=false"]) == 1
    assert f"MNIST is not in {project / 'data' / 'MNIST' / 'raw'}/" in capsys.readouterr().err
    assert (project / "results").is_dir() and list((project / "results").iterdir()) == []
    assert list(elsewhere.iterdir()) == []
