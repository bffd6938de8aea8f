import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # dora_example.py is a script at the top level, not in the package


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
