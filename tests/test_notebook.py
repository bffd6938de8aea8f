"""notebooks/lora_and_dora.ipynb: it runs top to bottom on a smoke-sized slice of MNIST, the cells that
check its claims (LoRA equals its base at init, DoRA's m starts at the row norms of W0, merged logits
equal unmerged ones) ran and held, and the copy in the repository keeps the outputs a reader sees."""

import sys
from pathlib import Path

import pytest

INSTALL = "pip install -r requirements-dev.txt"
nbformat = pytest.importorskip("nbformat", reason=f"nbformat is not installed ({INSTALL})")
nbclient = pytest.importorskip("nbclient", reason=f"nbclient is not installed ({INSTALL})")
# the python3 kernel the notebook runs in: jupyter_client finds ipykernel's own spec, this interpreter
pytest.importorskip("ipykernel", reason=f"ipykernel is not installed ({INSTALL})")

from conftest import REPO  # noqa: E402  (after the skips: without nbclient there is nothing to import for)

NOTEBOOK = REPO / "notebooks" / "lora_and_dora.ipynb"
# The tags of the cells whose asserts check what the lesson claims (the cell's metadata, "tags")
CHECK_TAGS = ("check-lora-equals-base", "check-dora-magnitude-row-norms", "check-merge-equals-unmerged")
N_FIGURES = 2  # loss and accuracy curves; dM against dD
# Smoke size: 16 batches of 64 per epoch still give the dM-dD lines 4 measured steps
SMOKE_SIZE = {"LESSON_TRAIN_IMAGES": "1024", "LESSON_TEST_IMAGES": "1000"}
CELL_TIMEOUT_S = 120  # per cell; the slowest, fine-tuning both adapters, takes a few seconds at smoke size


def tagged_cells(notebook, tag: str) -> list:
    return [cell for cell in notebook.cells if tag in cell.get("metadata", {}).get("tags", [])]


def errors(cell) -> list[str]:
    return [f"{output.ename}: {output.evalue}" for output in cell.get("outputs", []) if output.output_type == "error"]


def figures(notebook) -> int:
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.outputs)


def test_check_cells_are_in_the_notebook():
    """Each claim has one cell that asserts it, so the run below cannot pass with a check deleted."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for tag in CHECK_TAGS:
        cells = tagged_cells(notebook, tag)
        assert len(cells) == 1, f"{len(cells)} cells tagged {tag!r}, expected 1"
        assert cells[0].cell_type == "code" and "assert" in cells[0].source, f"the cell tagged {tag!r} asserts nothing"


def test_stored_notebook_shows_its_outputs():
    """The repository's copy was executed top to bottom and kept its outputs, figures included, so a
    reader on GitHub sees them without running it."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    counts = [cell.execution_count for cell in code_cells]
    assert counts == list(range(1, len(code_cells) + 1)), f"not executed top to bottom in one run: {counts}"
    assert not [error for cell in code_cells for error in errors(cell)]
    assert figures(notebook) == N_FIGURES


def test_notebook_runs_and_its_checks_hold(monkeypatch, mnist_root):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # One cell of the test's own, after the lesson's: which interpreter the kernel ran
    notebook.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    for name, value in SMOKE_SIZE.items():
        monkeypatch.setenv(name, value)  # the kernel inherits this process's environment
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError, with the failing assert's text, if any cell fails

    assert Path(notebook.cells[-1].outputs[0].text.strip()).resolve() == Path(sys.executable).resolve()
    for tag in CHECK_TAGS:
        cell, = tagged_cells(notebook, tag)
        assert cell.execution_count is not None, f"the cell tagged {tag!r} did not run"
        assert not errors(cell), f"the cell tagged {tag!r} failed: {errors(cell)}"
    assert figures(notebook) == N_FIGURES
