"""What many test files share: the repository's MNIST, and runs of the pipeline on configs/smoke.yaml."""

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # dora_example.py is a script at the top level, not in the package
SMOKE = REPO / "configs" / "smoke.yaml"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The repository's data/ folder; .ci/run stages the four MNIST files in data/MNIST/raw/."""
    raw = REPO / "data" / "MNIST" / "raw"
    missing = [name for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
               if not (raw / name).exists()]
    assert not missing, f"MNIST files missing from {raw}: {missing} (see data/README.md)"
    return REPO / "data"


def smoke(output: Path, *overrides: str, run_name: str = "run", exit_code: int = 0) -> Path:
    """``python dora_example.py --config configs/smoke.yaml [overrides]``, in-process, writing to
    ``output/run_name``; checks the exit code and returns the run folder."""
    import dora_example  # imported here: conftest is loaded before sys.path holds the repository

    argv = ["--config", str(SMOKE), f"data.root={REPO / 'data'}", f"output.dir={output}",
            f"output.run_name={run_name}", *overrides]
    assert dora_example.main(argv) == exit_code
    return output / run_name


def summary_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, mnist_root) -> Path:
    """The run folder of one smoke run, shared by every test that only reads what a plain run
    writes: configs/smoke.yaml, its accuracies measured on all 10,000 test images."""
    return smoke(tmp_path_factory.mktemp("smoke"), "data.test_subset=null")
