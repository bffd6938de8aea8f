"""The shifted fine-tuning tasks, on synthetic images (no MNIST needed)."""

import pytest
import torch

from loradora.data import Split
from loradora.tasks import pixel_permutation, rotate_images, shift_split, task_label


def images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 784)


def test_same_is_the_split_itself():
    split = Split(images(), torch.arange(4))
    assert shift_split(split, "same", rotate_degrees=30.0) is split


def test_rotation_by_90_degrees_is_a_quarter_turn_counter_clockwise():
    x = images()
    expected = torch.rot90(x.reshape(-1, 28, 28), k=1, dims=(1, 2)).reshape(-1, 784)
    torch.testing.assert_close(rotate_images(x, 90.0), expected)
    torch.testing.assert_close(rotate_images(x, 0.0), x)


def test_rotation_by_45_degrees_moves_a_pixel_where_geometry_says():
    # Two bright pixels straddling the centre row (13.5), 7.5 px right of the centre column (13.5).
    x = torch.zeros(1, 28, 28)
    x[0, 13, 21] = x[0, 14, 21] = 1.0
    rotated = rotate_images(x.reshape(1, 784), 45.0).reshape(28, 28)
    rows, columns = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    centroid = ((rotated * rows).sum() / rotated.sum(), (rotated * columns).sum() / rotated.sum())
    # 45 degrees counter-clockwise: 7.5 / sqrt(2) = 5.30 px up and right of the centre.
    offset = 7.5 / 2**0.5
    assert centroid[0].item() == pytest.approx(13.5 - offset, abs=0.1)
    assert centroid[1].item() == pytest.approx(13.5 + offset, abs=0.1)


def test_rotated_split_keeps_labels_and_count():
    split = Split(images(6), torch.arange(6))
    shifted = shift_split(split, "rotate", rotate_degrees=45.0)
    assert shifted.images.shape == (6, 784) and torch.equal(shifted.labels, split.labels)
    assert not torch.allclose(shifted.images, split.images)


def test_permutation_is_fixed_by_its_seed_and_shared_by_train_and_test():
    train, test = Split(images(5), torch.arange(5)), Split(images(3), torch.arange(3))
    order = pixel_permutation(7)
    assert torch.equal(order.sort().values, torch.arange(784))  # a bijection: no pixel lost or doubled
    assert torch.equal(order, pixel_permutation(7)) and not torch.equal(order, pixel_permutation(8))
    for split in (train, test):
        shifted = shift_split(split, "permute", permutation_seed=7)
        assert torch.equal(shifted.images, split.images[:, order])
        assert torch.equal(shifted.images.sort(dim=1).values, split.images.sort(dim=1).values)


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="unknown task"):
        shift_split(Split(images(), torch.arange(4)), "flip")


def test_labels_name_the_shift():
    assert task_label("rotate", 45.0) == "MNIST rotated 45 degrees"
    assert "permuted" in task_label("permute", permutation_seed=3)
    assert task_label("same") == "MNIST"
