"""What a run prints and names, read as a newcomer reads it (issue 31): the answer within a screen,
no config dump unless asked, a folder name that says what ran, the tables saved as markdown."""

import io
import re
from contextlib import redirect_stdout

import dora_example
from conftest import REPO, smoke
from loradora.config import load_config, adapter_differences
from loradora.run_folder import LABEL_LIMIT, create_run_dir, run_label


def default_run(tmp_path, *overrides: str) -> str:
    """``python dora_example.py`` as a user types it (the default config, all of MNIST), its output."""
    out = io.StringIO()
    argv = [f"data.root={REPO / 'data'}", f"output.dir={tmp_path}", "output.run_name=default",
            f"cache.dir={tmp_path / 'cache'}", *overrides]
    with redirect_stdout(out):
        assert dora_example.main(argv) == 0
    return out.getvalue()


def lines_to_the_table(out: str) -> list[str]:
    """The lines up to and including the side-by-side table (its header starts with "method")."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("method "))
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    return lines[:end]


def test_a_default_run_gives_its_table_within_60_lines_and_no_config_dump(tmp_path):
    out = default_run(tmp_path)
    head = lines_to_the_table(out)
    assert len(head) <= 60, len(head)
    assert not {"lora:", "finetune:", "experiment:"} & set(out.splitlines())  # the YAML's section lines
    # the table's last row is dora's, so the answer is on screen
    assert head[-1].startswith("dora ")


def test_the_config_is_printed_on_request(tmp_path, mnist_root, capsys):
    smoke(tmp_path, "log.print_config=true")
    lines = capsys.readouterr().out.splitlines()
    assert "lora:" in lines and "finetune:" in lines


def test_a_default_name_says_what_ran(tmp_path):
    label = run_label("smoke", ["lora.rank=8", "experiment.seeds=[1, 2, 3]", "output.dir=/tmp/x",
                                "data.root=/some/where"])
    assert label == "smoke_lora.rank=8_experiment.seeds=1,2,3_data.root=somewhere"
    assert len(run_label("smoke", [f"experiment.seeds=[{', '.join(map(str, range(100)))}]"])) == LABEL_LIMIT
    first, second = create_run_dir(tmp_path, None, label), create_run_dir(tmp_path, None, label)
    assert first != second  # the same second: a suffix, never the same folder
    assert re.fullmatch(r"\d{8}-\d{6}_" + re.escape(label), first.name)
    assert second.name.startswith(first.name)


def test_unlike_adapters_are_named_before_training(tmp_path, mnist_root, capsys):
    assert adapter_differences(load_config(REPO / "configs" / "default.yaml")) == ""
    assert adapter_differences(load_config(REPO / "configs" / "default.yaml", ["experiment.ranks=[2, 4]",
                                                                               "lora.rank=8"])) == ""
    smoke(tmp_path, "lora.rank=8", "dora.alpha=16")
    lines = capsys.readouterr().out.splitlines()
    note = next(i for i, line in enumerate(lines) if line.startswith("note: LoRA and DoRA differ"))
    assert "rank 8 and 4" in lines[note] and "alpha 8 and 16" in lines[note]
    assert note < next(i for i, line in enumerate(lines) if line.startswith("== pretrained"))


def test_the_tables_are_saved_as_markdown_and_adapter_lines_name_their_seed(tmp_path, mnist_root, capsys):
    run = smoke(tmp_path, "experiment.seeds=[3, 4]")
    out = capsys.readouterr().out
    table = (run / "table.md").read_text().splitlines()
    methods = [row.split("|")[1].strip() for row in table[2:] if row.startswith("| ") and not row.startswith("| pair")]
    printed = [line.split()[0] for line in lines_to_the_table(out)[-3:]]
    assert methods[:3] == printed == ["pretrained", "lora", "dora"]
    assert any(row.startswith("| dora - lora | 2 |") for row in table)
    adapter_lines = [line for line in out.splitlines() if "adapter file" in line]
    assert adapter_lines and all(line.split(":")[0].endswith(", seed 3") for line in adapter_lines)
