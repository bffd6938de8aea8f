"""Reading MNIST: the project's own IDX reader, from the unpacked files or the .gz downloads alone."""

import shutil

import pytest
import torch

from loradora.data import DOWNLOADS, DataUnavailable, Split, load_mnist, read_idx, seed_subset
from loradora.training import own_batches


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


def test_each_seed_draws_its_own_fine_tuning_set_nested_across_sizes():
    """finetune.subset_per_seed (issue 30): seeds draw apart, so an interval over seeds includes the
    draw; one seed's 256 images lie inside its 2,048, so the size axis still compares nested sets."""
    small = {seed: seed_subset(5000, 256, 0, seed) for seed in (1, 2)}
    large = {seed: seed_subset(5000, 2048, 0, seed) for seed in (1, 2)}
    assert set(small[1].tolist()) <= set(large[1].tolist())
    assert set(small[1].tolist()) != set(small[2].tolist())
    assert len(set(small[1].tolist())) == 256 and int(small[1].max()) < 5000
    assert torch.equal(seed_subset(5000, 256, 0, 1), small[1])            # a resume draws the same
    assert not torch.equal(seed_subset(5000, 256, 1, 1), small[1])        # subset_seed changes it


def test_a_member_with_its_own_subset_trains_on_those_images_alone():
    images = torch.arange(100, dtype=torch.float32)[:, None].expand(100, 784).contiguous()
    data = Split(images, torch.zeros(100, dtype=torch.long))
    subset = torch.tensor([3, 17, 42, 64, 99])
    batches = own_batches(data, subset, 2, torch.Generator().manual_seed(0), steps=7)
    seen = torch.cat(batches).tolist()
    assert len(batches) == 7 and set(seen) == set(subset.tolist())
