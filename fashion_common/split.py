"""A fixed, seeded validation split of the training set, for choosing a recipe without the test set."""

from __future__ import annotations

import numpy as np

from .data import FashionData

# Fixed on purpose and independent of TrainConfig.seed: every run, whatever its seed, holds out the same images.
SPLIT_SEED = 20_251_127


def validation_indices(num_train: int, val_size: int, seed: int = SPLIT_SEED):
    """(train indices, validation indices), both sorted int64; a seeded permutation's last val_size go to validation."""
    if not 0 <= val_size < num_train:
        raise ValueError(f"val_size must be in [0, {num_train}), got {val_size}")
    perm = np.random.default_rng([seed, num_train]).permutation(num_train)
    return np.sort(perm[: num_train - val_size]), np.sort(perm[num_train - val_size :])


def split_validation(data: FashionData, val_size: int, seed: int = SPLIT_SEED):
    """-> (data with the held-out images removed from train, FashionData whose *test* part is the validation set).

    The second one's train part is empty: it exists so each twin's own put_data/evaluate run on it unchanged.
    """
    train_idx, val_idx = validation_indices(len(data.train_labels), val_size, seed)
    train = FashionData(
        data.train_images[train_idx], data.train_labels[train_idx], data.test_images, data.test_labels, data.source
    )
    empty = data.train_images[:0], data.train_labels[:0]
    val = FashionData(
        *empty, data.train_images[val_idx], data.train_labels[val_idx], data.source + " (validation split)"
    )
    return train, val
