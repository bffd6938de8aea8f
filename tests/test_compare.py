"""python -m loradora.compare: runs side by side, their differing config keys as columns; a run
that did not finish is marked, a summary.json it cannot read is one line, and the rest still print.

The tables are read as tables: the markdown header and rows split into cells, never the prose."""

import csv
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, smoke
from loradora import compare, pipeline

# Shared by all three runs, so none of them is a differing key: a smaller fine-tuning job than
# configs/smoke.yaml's, since these tests read tables, not accuracies.
SMALLER = ("data.train_subset=512", "data.test_subset=200", "finetune.epochs=1")


@pytest.fixture(scope="session")
def three_runs(tmp_path_factory, mnist_root) -> list:
    """The issue's three runs: the defaults, both ranks at 8, and 3 seeds."""
    output = tmp_path_factory.mktemp("compare")
    return [smoke(output, *SMALLER, run_name="default"),
            smoke(output, *SMALLER, "lora.rank=8", "dora.rank=8", run_name="r8"),
            smoke(output, *SMALLER, "experiment.seeds=[1,2,3]", run_name="seeds3")]


def table(out: str) -> tuple[list[str], list[dict[str, str]]]:
    """The markdown table at the top of ``out``: its header, and each row as {column: cell}."""
    lines = [line for line in out.splitlines() if line.startswith("|")]
    columns = cells(lines[0])
    assert set(lines[1]) <= {"|", "-"}, lines[1]
    return columns, [dict(zip(columns, cells(line), strict=True)) for line in lines[2:]]


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split(" | ")]


def below_table(out: str) -> list[str]:
    return [line for line in out.splitlines() if line and not line.startswith("|")]


def compared(capsys, *runs, code: int = 0) -> str:
    assert compare.main([str(run) for run in runs]) == code
    return capsys.readouterr().out


def test_the_columns_are_exactly_the_overridden_keys(three_runs, capsys):
    columns, rows = table(compared(capsys, *three_runs))
    settings = columns[columns.index("run") + 1:columns.index("method")]
    assert sorted(settings) == ["dora.rank", "experiment.seeds", "lora.rank"]  # output.* too differs: ignored
    by_run = {(row["run"], row["method"]): row for row in rows}
    default, r8, seeds3 = map(str, three_runs)
    assert by_run[r8, "lora"]["lora.rank"] == "8" and by_run[default, "lora"]["lora.rank"] == "4"
    assert by_run[seeds3, "dora"]["experiment.seeds"] == "[1, 2, 3]"
    assert {row["status"] for row in rows} == {"complete"}
    # the 3-seed run has DoRA - LoRA with its interval, on its dora row; one seed has none
    assert by_run[seeds3, "dora"]["DoRA − LoRA [95% CI]"] != "-" and by_run[seeds3, "lora"]["DoRA − LoRA [95% CI]"] == "-"
    assert by_run[default, "dora"]["DoRA − LoRA [95% CI]"] == "-"


def test_csv_holds_the_printed_table(three_runs, tmp_path, capsys):
    assert compare.main([*map(str, three_runs), "--csv", str(tmp_path / "runs.csv")]) == 0
    columns, rows = table(capsys.readouterr().out)
    with open(tmp_path / "runs.csv", newline="", encoding="utf-8") as file:
        written = list(csv.reader(file))
    assert written == [columns, *[list(row.values()) for row in rows]]


def copy_run(run, folder):
    """A run folder's config.yaml and summary.json (what compare reads), under another name."""
    folder.mkdir()
    for name in ("config.yaml", "summary.json"):
        shutil.copy(run / name, folder / name)
    return folder


def test_a_stopped_run_is_marked_in_its_rows(three_runs, capsys, monkeypatch):
    # Stopped as Ctrl-C stops it, after the pretraining: the pipeline marks its summary interrupted.
    def stop(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "finetune", stop)
    interrupted = smoke(three_runs[0].parent, *SMALLER, run_name="interrupted", exit_code=130)
    # Killed before its first phase ended: a jobs/ folder and no summary.json.
    killed = three_runs[0].parent / "killed"
    (killed / "jobs").mkdir(parents=True)
    shutil.copy(three_runs[0] / "config.yaml", killed / "config.yaml")
    capsys.readouterr()
    _, rows = table(compared(capsys, three_runs[0], interrupted, killed))
    status = {row["run"]: row["status"] for row in rows}
    assert status[str(three_runs[0])] == "complete"
    assert status[str(interrupted)] == "interrupted"
    assert [row["method"] for row in rows if row["run"] == str(interrupted)] == ["pretrained"]
    assert status[str(killed)].startswith("no summary.json")


@pytest.mark.parametrize("content,problem", [
    ("{\"status\": \"complete\", \"methods\"", "is not JSON"),
    ("[1, 2, 3]", "holds a JSON list"),
    ("{\"status\": \"complete\", \"methods\": {}}", "has no comparisons"),
    (None, "its results are not this version's"),  # a field of its records missing
])
def test_a_malformed_summary_is_one_line_and_the_others_still_print(three_runs, tmp_path, capsys, content, problem):
    broken = copy_run(three_runs[0], tmp_path / "broken")
    if content is None:
        summary = (broken / "summary.json").read_text()
        content = summary.replace('"n_test"', '"n_test_images"')
    (broken / "summary.json").write_text(content)
    out = compared(capsys, three_runs[0], broken, three_runs[1])
    _, rows = table(out)
    assert {row["run"] for row in rows} == {str(three_runs[0]), str(broken), str(three_runs[1])}
    assert [row["status"] for row in rows if row["run"] == str(broken)] == ["unreadable summary.json"]
    lines = [line for line in below_table(out) if str(broken) in line]
    assert len(lines) == 1 and problem in lines[0], lines
    assert "Traceback" not in out


def test_a_map_is_one_row_pointing_to_its_table(three_runs, tmp_path, capsys):
    folder = tmp_path / "map"
    folder.mkdir()
    config = yaml.safe_load((three_runs[0] / "config.yaml").read_text())
    config["map"]["rotate_degrees"] = [0.0, 30.0]
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "map.json").write_text("{}")
    (folder / "map.md").write_text("| the map |\n")
    columns, rows = table(compared(capsys, three_runs[0], folder))
    assert "map.rotate_degrees" in columns
    assert [row["status"] for row in rows if row["run"] == str(folder)] == ["map: see map.md"]


def test_bad_arguments_exit_2_and_print_no_table(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for argv in ([], [str(tmp_path / "missing")], [str(tmp_path / "empty")]):
        assert compare.main(argv) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("error: ") and err.count("\n") == 1


def test_importing_it_runs_nothing_and_loads_no_torch():
    code = ("import sys; import loradora.compare as c; assert callable(c.main); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr + result.stdout
