"""A named --data-dir (or FASHION_TWINS_DATA) is verified every time: a corrupt file there is an error even
with a good cache."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from backends import get_backend
from twin_data import write_idx_set

from fashion_common import data as data_mod
from fashion_common.data import load_fashion_mnist
from fashion_common.errors import DataError


def _good_state():
    return get_backend("torch").to_state_dict(get_backend("torch").init(seed=0))


# --------------------------------------------------------------------- data: an explicit --data-dir is always verified


@pytest.mark.parametrize("how", ["--data-dir", "FASHION_TWINS_DATA"])
def test_a_corrupt_file_in_a_named_data_folder_is_an_error_even_with_a_good_cache(tmp_path, cache, monkeypatch, how):
    arrays, checksums = write_idx_set(tmp_path / "good")
    load_fashion_mnist(tmp_path / "good", checksums=checksums)  # the cache now holds good copies
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in checksums:
        (bad / f"{name}.gz").write_bytes((tmp_path / "good" / f"{name}.gz").read_bytes())
    payload = bytearray(gzip.decompress((bad / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    payload[-1] ^= 0xFF
    (bad / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(payload)))
    if how == "--data-dir":

        def call():
            return load_fashion_mnist(bad, checksums=checksums)

    else:
        monkeypatch.setenv(data_mod.ENV_DATA, str(bad))

        def call():
            return load_fashion_mnist(checksums=checksums)

    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz decompresses to the wrong bytes"):
        call()
    # and the good cache was not overwritten by anything from the bad folder
    good = load_fashion_mnist(tmp_path / "good", checksums=checksums)
    np.testing.assert_array_equal(good.test_labels, arrays["t10k-labels-idx1-ubyte"])
