"""The digits data: shapes, ranges, a stratified and reproducible split."""
import pytest
import torch

from attnbook.data.digits import (
    NUM_CLASSES,
    digit_images,
    load_digits_split,
    per_class_subset,
    stratified_split,
)


def test_digit_images_shapes_and_range():
    images, labels = digit_images()
    assert images.shape == (1797, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (1797,) and labels.dtype == torch.long
    assert images.min() == 0.0 and images.max() == 1.0
    assert set(labels.tolist()) == set(range(NUM_CLASSES))


def test_split_is_a_partition_and_stratified():
    split = load_digits_split()
    train, test = split["train_index"], split["test_index"]
    assert len(train) + len(test) == 1797
    assert len(set(train.tolist()) | set(test.tolist())) == 1797
    assert split["train_x"].shape == (len(train), 8, 8)
    assert split["test_y"].shape == (len(test),)
    _, labels = digit_images()
    for c in range(NUM_CLASSES):
        share = (split["test_y"] == c).sum() / (labels == c).sum()
        assert abs(float(share) - 0.25) < 0.01  # round(c/4) off by at most 0.5 of ~180 images


def test_split_reproducible_and_seed_dependent():
    a, b = load_digits_split(seed=3), load_digits_split(seed=3)
    assert torch.equal(a["test_index"], b["test_index"]) and torch.equal(a["train_x"], b["train_x"])
    assert not torch.equal(a["test_index"], load_digits_split(seed=4)["test_index"])


def test_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(torch.zeros(10, dtype=torch.long), test_fraction=1.0)


def test_per_class_subset_balanced_and_nested():
    _, labels = digit_images()
    small, large = per_class_subset(labels, 5, seed=1), per_class_subset(labels, 20, seed=1)
    assert torch.bincount(labels[small]).tolist() == [5] * NUM_CLASSES
    assert set(small.tolist()) <= set(large.tolist())
    with pytest.raises(ValueError, match="per_class"):
        per_class_subset(labels, 10_000)
