"""Which test images each fine-tuned member got right, kept bit-packed in the run folder
(``test_correct.pt``, 1,250 bytes per member for 10,000 images): the matrices of seeds x images that
an interval for new test images needs (stats.two_way_difference), and that a later analysis can
read back (``ImageHits.load``)."""

import io
from pathlib import Path

import torch

from loradora.files import write_atomic

BIT_WEIGHTS = 2 ** torch.arange(8, dtype=torch.uint8)  # bit k of a byte is image 8j + k


HITS_FILE = "test_correct.pt"  # a run's ImageHits, in its folder


def pack(hits: torch.Tensor) -> torch.Tensor:
    """A bool vector as bytes, eight images to a byte (the last byte padded with False)."""
    padded = torch.zeros(-(-len(hits) // 8) * 8, dtype=torch.uint8)
    padded[:len(hits)] = hits.to(torch.uint8)
    return (padded.reshape(-1, 8) * BIT_WEIGHTS).sum(dim=1, dtype=torch.uint8)


def unpack(packed: torch.Tensor, n_images: int) -> torch.Tensor:
    return ((packed[:, None] & BIT_WEIGHTS) != 0).flatten()[:n_images]


class ImageHits:
    """Per variant and seed, which of the test images it classified correctly."""

    def __init__(self, n_images: int | None = None, packed: dict | None = None):
        self.n_images = n_images
        self.packed: dict[str, dict[int, torch.Tensor]] = packed or {}

    def add(self, name: str, seed: int, hits: torch.Tensor) -> None:
        if self.n_images is None:
            self.n_images = len(hits)
        if len(hits) != self.n_images:
            raise ValueError(f"{name}, seed {seed}: {len(hits)} test images, the run's others have {self.n_images}")
        self.packed.setdefault(name, {})[seed] = pack(hits.cpu())

    def same_as(self, name: str, other: str) -> None:
        """``name`` is the very runs of ``other`` (a variant whose tuned rate is the shared one)."""
        if other in self.packed:
            self.packed[name] = dict(self.packed[other])

    def seeds(self, name: str) -> set[int]:
        """The seeds whose hits ``name`` has: those on which it finished."""
        return set(self.packed.get(name, {}))

    def matrix(self, name: str, seeds: list[int]) -> torch.Tensor | None:
        """(seeds, images) bool, in the order of ``seeds``; None unless every seed has it."""
        kept = self.packed.get(name, {})
        if not seeds or any(seed not in kept for seed in seeds):
            return None
        return torch.stack([unpack(kept[seed], self.n_images) for seed in seeds])

    def save(self, path: Path) -> None:
        buffer = io.BytesIO()
        torch.save({"n_images": self.n_images, "packed": self.packed}, buffer)
        write_atomic(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> "ImageHits":
        saved = torch.load(path, weights_only=True)
        return cls(saved["n_images"], saved["packed"])
