"""MNIST as two tensors on the device, and batches as index slices of a seeded permutation.

MNIST is 47 MB as float32, so it lives on the device once; a training step then costs one index
gather instead of a DataLoader's per-image PIL -> tensor conversion (airbench's approach).
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch


# The canonical files: the four downloads (MD5s as torchvision pins them) and what they unpack to
# (MD5s of the unpacked canonical files). torchvision verifies a download but then trusts any
# unpacked file that exists, so a truncated or damaged one would be read silently.
MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
DOWNLOADS = [name for name in MD5 if name.endswith(".gz")]


class DataUnavailable(RuntimeError):
    """MNIST is not on disk, cannot be downloaded, or a file of it is damaged."""


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
    and ``download`` is set. Every file already there is checked against its MD5 first.
    """
    verify_files(raw_folder(root), prefix="train" if train else "t10k")
    from torchvision.datasets import MNIST  # here, not at the top: a second of start-up, needed only now

    try:
        dataset = MNIST(root=str(root), train=train, download=download)
    except (RuntimeError, OSError) as error:
        raise DataUnavailable(missing_data_message(root, error)) from error
    images, labels = dataset.data, dataset.targets
    if subset is not None:
        images, labels = images[:subset], labels[:subset]
    images = images.reshape(len(images), -1).to(device=device, dtype=torch.float32).div_(255)
    return Split(images, labels.to(device))


def raw_folder(root: str | Path) -> Path:
    return Path(root) / "MNIST" / "raw"


def verify_files(raw: Path, prefix: str = "") -> None:
    """Raise DataUnavailable naming the first file in ``raw`` whose MD5 is not the canonical one."""
    for name, expected in MD5.items():
        path = raw / name
        if name.startswith(prefix) and path.exists() and (actual := md5(path)) != expected:
            raise DataUnavailable(
                f"{path} is damaged or truncated (MD5 {actual}, expected {expected}); "
                f"delete it and run again to download it, or copy a good one there"
            )


def md5(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "md5").hexdigest()


def missing_data_message(root: str | Path, error: Exception) -> str:
    files = "".join(f"\n  {name}  MD5 {MD5[name]}" for name in DOWNLOADS)
    return (
        f"MNIST is not in {raw_folder(root)}/ and could not be downloaded "
        f"({str(error).strip().splitlines()[-1]}). Without a network, copy the four canonical files "
        f"there (or set data.root to a folder whose MNIST/raw/ holds them):{files}"
    )


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator,
                     device: torch.device | str) -> tuple[torch.Tensor, ...]:
    """Index tensors of one epoch's batches; the last may be short, as a DataLoader's is.

    The permutation is drawn on the CPU so a seed gives the same batch order on every device.
    """
    return torch.randperm(n, generator=generator).to(device).split(batch_size)
