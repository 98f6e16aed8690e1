"""The loader: torchvision reads files we arranged and verified; bad files get one clear error."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from twin_data import real_data, write_idx_set

from fashion_common import data as data_mod
from fashion_common.data import batch_order, load_fashion_mnist, scale_images
from fashion_common.errors import DataError


def test_loader_returns_the_exact_bytes_of_synthetic_idx_files(tmp_path, cache):
    arrays, checksums = write_idx_set(tmp_path / "gz", n_train=20, n_test=10)
    data = load_fashion_mnist(tmp_path / "gz", checksums=checksums)
    np.testing.assert_array_equal(data.train_images, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.train_labels, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(data.test_images, arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.test_labels, arrays["t10k-labels-idx1-ubyte"])
    assert data.train_images.dtype == np.uint8 and data.train_images.shape == (20, 28, 28)
    # torchvision's layout was arranged in the cache, where a second load finds it
    assert (cache / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_loader_accepts_torchvisions_own_folder_layout(tmp_path, cache):
    arrays, checksums = write_idx_set(tmp_path / "gz")
    load_fashion_mnist(tmp_path / "gz", checksums=checksums)
    data = load_fashion_mnist(cache, checksums=checksums)  # cache now holds FashionMNIST/raw/
    np.testing.assert_array_equal(data.test_images, arrays["t10k-images-idx3-ubyte"])


def test_loader_refuses_corrupted_bytes_and_names_the_fix(tmp_path, cache):
    arrays, checksums = write_idx_set(tmp_path / "gz")
    path = tmp_path / "gz" / "train-labels-idx1-ubyte.gz"
    payload = bytearray(gzip.decompress(path.read_bytes()))
    payload[-1] ^= 0xFF  # one flipped label byte
    path.write_bytes(gzip.compress(bytes(payload)))
    with pytest.raises(
        DataError,
        match=r"train-labels-idx1-ubyte\.gz decompresses to the wrong bytes.*apt-get install -y dataset-fashion-mnist",
    ):
        load_fashion_mnist(tmp_path / "gz", checksums=checksums)


def test_loader_refuses_a_truncated_gzip_file(tmp_path, cache):
    arrays, checksums = write_idx_set(tmp_path / "gz")
    path = tmp_path / "gz" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match="not a readable gzip file"):
        load_fashion_mnist(tmp_path / "gz", checksums=checksums)


def test_loader_refuses_a_corrupted_file_already_in_the_cache(tmp_path, cache):
    arrays, checksums = write_idx_set(tmp_path / "gz")
    load_fashion_mnist(tmp_path / "gz", checksums=checksums)
    raw = cache / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte"
    raw.write_bytes(raw.read_bytes()[:-1])  # partial file
    with pytest.raises(DataError, match="corrupt or partial"):
        load_fashion_mnist(cache, checksums=checksums)


def test_missing_data_dir_gets_one_error_offering_every_fix(tmp_path, cache):
    with pytest.raises(DataError) as info:
        load_fashion_mnist(tmp_path / "empty")
    message = str(info.value)
    assert "--data-dir" in message and "apt-get install -y dataset-fashion-mnist" in message and "--download" in message
    assert "\n" not in message


def test_no_data_anywhere_lists_the_folders_searched(tmp_path, cache):
    with pytest.raises(DataError, match="Fashion-MNIST not found.*searched.*no-debian"):
        load_fashion_mnist()


def test_data_dir_comes_before_the_environment_variable(tmp_path, cache, monkeypatch):
    first, checks_a = write_idx_set(tmp_path / "a", seed=1)
    _, checks_b = write_idx_set(tmp_path / "b", seed=2)
    monkeypatch.setenv(data_mod.ENV_DATA, str(tmp_path / "b"))
    assert data_mod.candidate_dirs(tmp_path / "a")[0][0] == tmp_path / "a"
    assert data_mod.candidate_dirs(None)[0][0] == tmp_path / "b"
    data = load_fashion_mnist(tmp_path / "a", checksums=checks_a)
    np.testing.assert_array_equal(data.train_images, first["train-images-idx3-ubyte"])


def test_scaling_matches_torchvision_to_tensor_exactly():
    from torchvision.transforms import ToTensor

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    images[0, 0, :3] = [0, 128, 255]
    ours = scale_images(images)
    theirs = np.stack([ToTensor()(img).numpy()[0] for img in images])
    np.testing.assert_array_equal(ours, theirs)


def test_batch_order_is_a_repeatable_permutation_that_drops_the_partial_batch():
    a = batch_order(seed=3, epoch=1, num_examples=1000, batch_size=64)
    b = batch_order(seed=3, epoch=1, num_examples=1000, batch_size=64)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (1000 // 64, 64)
    assert len(np.unique(a)) == a.size  # no index twice
    assert not np.array_equal(a, batch_order(seed=3, epoch=2, num_examples=1000, batch_size=64))


@pytest.mark.data
def test_real_fashion_mnist_has_60000_train_and_10000_test_images_with_6000_and_1000_per_class():
    data = real_data()
    assert data.train_images.shape == (60_000, 28, 28) and data.test_images.shape == (10_000, 28, 28)
    assert np.bincount(data.train_labels).tolist() == [6000] * 10
    assert np.bincount(data.test_labels).tolist() == [1000] * 10
    assert data.train_images.dtype == np.uint8 and data.train_images.max() == 255


def test_an_environment_variable_naming_an_empty_folder_is_an_error_not_a_silent_fallback(tmp_path, cache, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(data_mod.ENV_DATA, str(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"FASHION_TWINS_DATA .*empty holds no Fashion-MNIST files"):
        load_fashion_mnist()


@pytest.mark.parametrize("how", ["env", "flag"])
def test_a_named_data_folder_that_does_not_exist_is_said_not_to_exist(tmp_path, cache, monkeypatch, how):
    absent = tmp_path / "nonexistent"
    if how == "env":
        monkeypatch.setenv(data_mod.ENV_DATA, str(absent))
    with pytest.raises(
        DataError,
        match=rf"^{'FASHION_TWINS_DATA' if how == 'env' else '--data-dir'} \S*nonexistent "
        r"does not exist; install it",
    ):
        load_fashion_mnist(absent if how == "flag" else None)
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match=r"file is a file, not a folder"):
        load_fashion_mnist(tmp_path / "file")


def _torchvision_layout(tmp_path, checksums_from):
    """A user folder in torchvision's layout (FashionMNIST/raw/) holding copies of the verified files."""
    raw = tmp_path / "tv" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in checksums_from:
        (raw / name).write_bytes(gzip.decompress((tmp_path / "gz" / f"{name}.gz").read_bytes()))
    return tmp_path / "tv"


def test_stale_processed_files_beside_verified_raw_files_never_reach_the_model(tmp_path, cache):
    import torch

    arrays, checksums = write_idx_set(tmp_path / "gz", n_train=20, n_test=10)
    root = _torchvision_layout(tmp_path, checksums)
    processed = root / "FashionMNIST" / "processed"
    processed.mkdir()
    # torchvision's legacy cache: what it loads instead of raw/ when present. Relabelled: every label 9.
    for file, split in (("training.pt", "train"), ("test.pt", "t10k")):
        images = torch.from_numpy(arrays[f"{split}-images-idx3-ubyte"])
        torch.save((images, torch.full((len(images),), 9)), processed / file)
    data = load_fashion_mnist(root, checksums=checksums)
    np.testing.assert_array_equal(data.train_labels, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(data.test_labels, arrays["t10k-labels-idx1-ubyte"])
    # The root handed to torchvision's own dataset class (the tutorial benchmark) has no processed/ files,
    # and the user's folder is left as it was.
    tv_root = data_mod.prepare_raw(root, checksums)
    assert not (tv_root / "FashionMNIST" / "processed").exists()
    assert sorted(p.name for p in processed.iterdir()) == ["test.pt", "training.pt"]


def test_every_bit_flipped_inside_a_gzip_stream_is_one_data_error_or_changes_nothing(tmp_path, cache):
    arrays, checksums = write_idx_set(tmp_path / "gz")
    path = tmp_path / "gz" / "t10k-labels-idx1-ubyte.gz"
    good = path.read_bytes()
    outcomes = set()
    for offset in range(10, len(good) - 8):  # the deflate stream: after the 10-byte header, before CRC32 and size
        for bit in range(8):
            flipped = bytearray(good)
            flipped[offset] ^= 1 << bit
            path.write_bytes(bytes(flipped))
            try:
                data = load_fashion_mnist(tmp_path / "gz", checksums=checksums)
            except DataError as e:  # zlib.error, a CRC or length mismatch, or the sha256: each one line
                assert "t10k-labels-idx1-ubyte.gz" in str(e) and "\n" not in str(e)
                outcomes.add("error")
            else:  # a flip in the padding bits after the last block changes no decompressed byte
                np.testing.assert_array_equal(data.test_labels, arrays["t10k-labels-idx1-ubyte"])
                outcomes.add("same")
    assert "error" in outcomes
