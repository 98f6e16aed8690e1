"""Data for the tests: the real Fashion-MNIST (once per session) and small synthetic sets."""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from fashion_common.data import DEBIAN_DIR, ENV_DATA, FashionData, load_fashion_mnist
from fashion_common.errors import DataError


def real_data_available() -> bool:
    return (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file() or bool(os.environ.get(ENV_DATA))


@functools.lru_cache(maxsize=1)
def _real() -> FashionData:
    return load_fashion_mnist()


def real_data() -> FashionData:
    """The real set, or a skip that names the fix (CI installs it, so there it runs)."""
    if not real_data_available():
        pytest.skip("real Fashion-MNIST absent: apt-get install -y dataset-fashion-mnist, or set FASHION_TWINS_DATA")
    try:
        return _real()
    except DataError as e:
        pytest.skip(f"real Fashion-MNIST unusable here: {e}")


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file as the original release writes it: magic (0, 0, 0x08 ubyte, ndim), big-endian dims, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, n_train: int = 20, n_test: int = 10, seed: int = 0):
    """Write four small .gz IDX files in Debian's layout; returns (arrays, checksums of the decompressed bytes)."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, (n_train,), dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, (n_test,), dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    checksums = {}
    for name, array in arrays.items():
        payload = idx_bytes(array)
        checksums[name] = hashlib.sha256(payload).hexdigest()
        (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
    return arrays, checksums


def separable_set(n_per_class: int = 20, seed: int = 0) -> FashionData:
    """A trivially separable 10-class set: class k lights rows 2k..2k+2 of the image, plus faint noise."""
    rng = np.random.default_rng(seed)

    def make(n):
        labels = np.repeat(np.arange(10, dtype=np.int32), n)
        images = rng.integers(0, 30, (10 * n, 28, 28), dtype=np.uint8)
        for i, k in enumerate(labels):
            images[i, 2 * k + 4 : 2 * k + 6, 4:24] = 255
        perm = rng.permutation(len(labels))
        return images[perm], labels[perm]

    train_images, train_labels = make(n_per_class)
    test_images, test_labels = make(n_per_class // 2)
    return FashionData(train_images, train_labels, test_images, test_labels, source="synthetic")
