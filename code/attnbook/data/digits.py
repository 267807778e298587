"""The handwritten digits that ship with scikit-learn, as tensors with a fixed split.

The data set (the UCI "Optical Recognition of Handwritten Digits" test set, as bundled
with scikit-learn) holds 1797 grey-level images of 8 x 8 pixels with integer values
0 .. 16, about 180 per digit 0 .. 9. It needs no download, which is why the book uses
it for the vision chapters.

Everything here returns CPU tensors: images as ``float32`` in [0, 1] with shape
(N, 8, 8) (no channel axis; add one with ``x[:, None]`` for a Conv2d), labels as
``long`` with shape (N,). The split is stratified (every digit keeps its share in both
parts) and depends only on ``seed`` and ``test_fraction``, not on scikit-learn's
random-number code, so it is the same on every machine.
"""
from __future__ import annotations

import functools

import torch

Tensor = torch.Tensor

#: Largest pixel value in the raw data (values are counts of set pixels in a 4x4 block).
PIXEL_MAX = 16
#: Side of a digit image in pixels.
IMAGE_SIZE = 8
#: Number of classes (the digits 0 .. 9).
NUM_CLASSES = 10


@functools.lru_cache(maxsize=1)
def _raw() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits  # imported lazily: only these chapters need it

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32) / PIXEL_MAX  # (1797, 8, 8)
    labels = torch.as_tensor(bunch.target, dtype=torch.long)                  # (1797,)
    return images, labels


def digit_images() -> tuple[Tensor, Tensor]:
    """All 1797 digits: ``images`` (1797, 8, 8) float32 in [0, 1] and ``labels`` (1797,) long.

    Returns fresh copies, so callers may modify them.
    """
    images, labels = _raw()
    return images.clone(), labels.clone()


def stratified_split(labels: Tensor, *, test_fraction: float = 0.25,
                     seed: int = 0) -> tuple[Tensor, Tensor]:
    """Indices ``(train_index, test_index)`` of a stratified random split of ``labels``.

    For each class with c members, ``round(c * test_fraction)`` of them (chosen by a
    ``torch.Generator`` seeded with ``seed``) go to the test part and the rest to the
    training part. Both index tensors are sorted, so the order of the data is kept.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction} must lie strictly between 0 and 1")
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    generator = torch.Generator().manual_seed(seed)
    test_parts = []
    for cls in torch.unique(labels):  # sorted, so the random draws happen in a fixed order
        members = torch.nonzero(labels == cls).flatten()
        n_test = round(len(members) * test_fraction)
        order = torch.randperm(len(members), generator=generator)
        test_parts.append(members[order[:n_test]])
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    is_test[torch.cat(test_parts)] = True
    return torch.nonzero(~is_test).flatten(), torch.nonzero(is_test).flatten()


def load_digits_split(*, seed: int = 0, test_fraction: float = 0.25) -> dict[str, Tensor]:
    """The digits with a fixed stratified split.

    Returns a dict with ``train_x`` (N_train, 8, 8) and ``test_x`` (N_test, 8, 8), float32 in
    [0, 1]; ``train_y`` (N_train,) and ``test_y`` (N_test,), long in 0 .. 9; and
    ``train_index`` / ``test_index``, the rows of :func:`digit_images` each part came from.
    With the defaults: 1347 training and 450 test images.
    """
    images, labels = _raw()
    train_index, test_index = stratified_split(labels, test_fraction=test_fraction, seed=seed)
    return {
        "train_x": images[train_index].clone(), "train_y": labels[train_index].clone(),
        "test_x": images[test_index].clone(), "test_y": labels[test_index].clone(),
        "train_index": train_index, "test_index": test_index,
    }


def per_class_subset(labels: Tensor, per_class: int, *, seed: int = 0) -> Tensor:
    """Sorted indices of ``per_class`` random examples of every class in ``labels``.

    For training-set-size sweeps: ``x[idx], y[idx]`` is a balanced subset. Raises if a
    class has fewer than ``per_class`` members. Subsets drawn with the same seed are
    nested: the subset for a smaller ``per_class`` is contained in the one for a larger.
    """
    if per_class < 1:
        raise ValueError(f"per_class={per_class} must be at least 1")
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for cls in torch.unique(labels):
        members = torch.nonzero(labels == cls).flatten()
        if len(members) < per_class:
            raise ValueError(f"class {int(cls)} has {len(members)} examples, fewer than "
                             f"per_class={per_class}")
        order = torch.randperm(len(members), generator=generator)
        parts.append(members[order[:per_class]])
    return torch.cat(parts).sort().values
