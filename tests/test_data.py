"""Reading MNIST: the project's own IDX reader, from the unpacked files or the .gz downloads alone."""

import shutil

import pytest
import torch

from loradora.data import DOWNLOADS, DataUnavailable, load_mnist, read_idx


def test_the_gz_downloads_alone_are_enough_offline_and_are_unpacked_once(tmp_path, mnist_root):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in DOWNLOADS:
        shutil.copy(mnist_root / "MNIST" / "raw" / name, raw / name)
    from_gz = load_mnist(tmp_path, train=False, download=False)
    assert (raw / "t10k-images-idx3-ubyte").stat().st_size == 16 + 10_000 * 28 * 28
    reference = load_mnist(mnist_root, train=False, download=False)
    assert torch.equal(from_gz.images, reference.images) and torch.equal(from_gz.labels, reference.labels)
    assert from_gz.images.shape == (10_000, 784) and from_gz.labels.dtype == torch.int64
    assert 0.0 <= from_gz.images.min() and from_gz.images.max() == 1.0


def test_a_file_that_is_not_idx_is_refused(tmp_path):
    (tmp_path / "x").write_bytes(b"\x1f\x8b\x08\x00not idx")
    with pytest.raises(DataUnavailable, match="not an IDX file"):
        read_idx(tmp_path / "x")
