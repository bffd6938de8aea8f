"""MNIST as two tensors on the device, and batches as index slices of a seeded permutation.

MNIST is 47 MB as float32, so it lives on the device once; a training step then costs one index
gather instead of a DataLoader's per-image PIL -> tensor conversion (airbench's approach).
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.datasets import MNIST


class DataUnavailable(RuntimeError):
    """MNIST is neither on disk nor downloadable."""


@dataclass
class Split:
    images: torch.Tensor  # (N, 784) float32 in [0, 1], as torchvision's ToTensor() scales them
    labels: torch.Tensor  # (N,) int64 class indices

    def __len__(self) -> int:
        return len(self.labels)


def load_mnist(root: str | Path, train: bool, device: torch.device | str = "cpu",
               subset: int | None = None, download: bool = True) -> Split:
    """The training (60,000) or test (10,000) images; with ``subset``, the first ``subset`` of them.

    Reads ``<root>/MNIST/raw/``; torchvision downloads the four files there when they are missing
    and ``download`` is set, and it checks each file's MD5 before using it.
    """
    try:
        dataset = MNIST(root=str(root), train=train, download=download)
    except (RuntimeError, OSError) as error:
        raise DataUnavailable(missing_data_message(root, error)) from error
    images, labels = dataset.data, dataset.targets
    if subset is not None:
        images, labels = images[:subset], labels[:subset]
    images = images.reshape(len(images), -1).to(device=device, dtype=torch.float32).div_(255)
    return Split(images, labels.to(device))


def missing_data_message(root: str | Path, error: Exception) -> str:
    raw = Path(root) / "MNIST" / "raw"
    files = "\n".join(f"  {name}  (md5 {md5})" for name, md5 in MNIST.resources)
    return (
        f"MNIST is not in {raw}/ and could not be downloaded ({str(error).splitlines()[0]}).\n"
        f"Without a network, copy the four canonical files there:\n{files}\n"
        f"or point data.root at a folder whose MNIST/raw/ holds them."
    )


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator,
                     device: torch.device | str) -> tuple[torch.Tensor, ...]:
    """Index tensors of one epoch's batches; the last may be short, as a DataLoader's is.

    The permutation is drawn on the CPU so a seed gives the same batch order on every device.
    """
    return torch.randperm(n, generator=generator).to(device).split(batch_size)


def batch_count(n: int, batch_size: int) -> int:
    return -(-n // batch_size)
