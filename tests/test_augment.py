"""Augmentation in lockstep: shared shift offsets, identical on-device shifts in both twins, the validation split."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twin_data import real_data

from fashion_common.augment import shift_images, shift_offsets
from fashion_common.config import TrainConfig, tutorial_config
from fashion_common.data import FashionData
from fashion_common.spec import BACKENDS
from fashion_common.split import SPLIT_SEED, split_validation, validation_indices


def twin_shift(backend, images: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The twin's own on-device shift, numpy in and out ("flax" and "nnx" take JAX arrays)."""
    shift = importlib.import_module(f"fashion_{backend}.augment").shift_images
    if backend == "torch":
        import torch

        return shift(torch.from_numpy(images), torch.from_numpy(offsets)).numpy()
    import jax.numpy as jnp

    return np.asarray(shift(jnp.asarray(images), jnp.asarray(offsets)))


# ----------------------------------------------------------------------------- offsets


def test_shift_offsets_are_seeded_int8_and_cover_every_value_in_range():
    a = shift_offsets(seed=3, epoch=1, steps=50, batch=64, max_shift=1)
    assert a.shape == (50, 64, 2) and a.dtype == np.int8
    assert set(np.unique(a)) == {-1, 0, 1}  # 6,400 draws: each of the 3 values appears
    assert np.array_equal(a, shift_offsets(3, 1, 50, 64, 1))  # same seed and epoch, same offsets
    assert not np.array_equal(a, shift_offsets(3, 2, 50, 64, 1))  # a new epoch, new offsets
    assert not np.array_equal(a, shift_offsets(4, 1, 50, 64, 1))
    assert set(np.unique(shift_offsets(0, 1, 50, 64, 2))) == {-2, -1, 0, 1, 2}


def test_shift_offsets_are_all_zero_when_augmentation_is_off_and_reject_impossible_shifts():
    assert not shift_offsets(0, 1, 4, 8, 0).any()
    with pytest.raises(ValueError, match="max_shift must be in"):
        shift_offsets(0, 1, 4, 8, 28)


# ----------------------------------------------------------------------------- shifting


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_shift_moves_a_pixel_down_and_right_and_fills_zeros(backend):
    image = np.zeros((1, 28, 28), np.uint8)
    image[0, 0, 0], image[0, 27, 27] = 200, 100
    out = twin_shift(backend, np.repeat(image, 3, 0), np.array([[1, 2], [-1, -1], [0, 0]], np.int8))
    assert out.dtype == np.uint8 and out.shape == (3, 28, 28)
    assert out[0, 1, 2] == 200 and out[0].sum() == 200  # (dy, dx) = (1, 2): down 1, right 2; the 100 falls off
    assert out[1, 26, 26] == 100 and out[1].sum() == 100  # up and left: the 200 falls off
    assert np.array_equal(out[2], image[0])  # (0, 0) is the identity


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(batch=st.integers(0, 5), max_shift=st.integers(0, 27), seed=st.integers(0, 2**16))
def test_both_twins_shift_exactly_as_the_numpy_oracle(backend, batch, max_shift, seed):
    # uint8 in, uint8 out and a pure gather: no rounding anywhere, so equality is exact (including empty batches).
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch, 28, 28), dtype=np.uint8)
    offsets = rng.integers(-max_shift, max_shift + 1, (batch, 2)).astype(np.int8)
    assert np.array_equal(twin_shift(backend, images, offsets), shift_images(images, offsets))


def test_torch_and_flax_shift_a_real_batch_identically():
    data = real_data()
    images = data.train_images[:64]
    offsets = shift_offsets(0, 1, 1, 64, 1)[0]
    torch_out, flax_out = twin_shift("torch", images, offsets), twin_shift("flax", images, offsets)
    assert np.array_equal(torch_out, flax_out)
    assert not np.array_equal(torch_out, images)  # the shift did move pixels


# ----------------------------------------------------------------------------- validation split


def test_validation_split_is_fixed_disjoint_and_covers_the_training_set():
    train, val = validation_indices(60_000, 5_000)
    assert len(train) == 55_000 and len(val) == 5_000
    assert np.array_equal(np.union1d(train, val), np.arange(60_000)) and not np.intersect1d(train, val).size
    again_train, again_val = validation_indices(60_000, 5_000)
    assert np.array_equal(val, again_val)  # fixed: the same images are held out in every run
    assert not np.array_equal(val, validation_indices(60_000, 5_000, SPLIT_SEED + 1)[1])
    assert validation_indices(100, 0)[1].size == 0
    with pytest.raises(ValueError, match="val_size must be in"):
        validation_indices(100, 100)


def test_split_validation_moves_held_out_images_to_the_validation_set_and_keeps_the_test_set():
    data = FashionData(
        np.arange(50, dtype=np.uint8)[:, None, None].repeat(28, 1).repeat(28, 2),
        np.arange(50) % 10,
        np.zeros((7, 28, 28), np.uint8),
        np.zeros(7, np.int64),
        "fake",
    )
    train, val = split_validation(data, 10)
    assert len(train.train_labels) == 40 and len(val.test_labels) == 10 and len(val.train_labels) == 0
    assert np.array_equal(train.test_images, data.test_images)  # the test set is untouched
    # each image's pixels name its index: the two parts are disjoint and together are the training set
    ids = np.concatenate([train.train_images[:, 0, 0], val.test_images[:, 0, 0]])
    assert sorted(ids.tolist()) == list(range(50))
    assert np.array_equal(val.test_labels, val.test_images[:, 0, 0] % 10)  # labels travel with their images


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_training_with_a_validation_split_reports_validation_accuracy_every_epoch(backend, tmp_path):
    data = real_data()
    train = importlib.import_module(f"fashion_{backend}.train")
    config = TrainConfig(epochs=2, batch_size=32, limit_train=640, limit_test=200, val_size=128, device="cpu")
    lines = []
    _, metrics = train.train_and_evaluate(config, data, quiet=True, log=lines.append)
    assert metrics["num_train"] == 512 and metrics["num_val"] == 128 and metrics["num_test"] == 200
    for row in metrics["epochs"]:
        assert 0.0 <= row["val_accuracy"] <= 1.0 and row["val_loss"] > 0.0
    assert metrics["epochs"][-1]["val_accuracy"] > 0.3  # 2 epochs on 512 images: well above chance (0.1)
    assert all("val_acc" in line for line in lines)


# ----------------------------------------------------------------------------- lockstep with augmentation


def _sgd_with_shifts(**overrides):
    """The tutorial's recipe (plain SGD, lr 1e-3, batch 64), the one the existing lockstep uses, plus ±1 px shifts.

    SGD rather than the default AdamW: Adam divides each gradient by its own running RMS, so a weight
    whose true gradient is ~1e-9 (fed by border pixels a shift only sometimes lights) takes a step of
    up to lr from rounding noise alone; with AdamW the twins stay together only to ~1e-4 (README, Results: Parity).
    With plain SGD every rounding difference stays rounding-sized, so the lockstep isolates the shifts.
    """
    return tutorial_config(augment_shift=1, device="cpu").replace(**overrides)


@pytest.mark.data
@pytest.mark.parametrize("engine", ["eager", "fused"])
def test_twins_trained_in_lockstep_with_shifts_stay_within_1e_5(engine):
    from fashion_compare.lockstep import lockstep

    config = _sgd_with_shifts()
    # 200 steps (batch 64) from one init, one batch order and one set of shifts, fp32 matmuls: the same
    # 1e-5 bound as the plain-SGD lockstep (fp32 rounding of differently ordered sums, ~1e-7 relative per op).
    result = lockstep(real_data(), config=config, steps=200, weight_every=50, engine=engine)
    assert result["steps"] == 200 and result["engine"] == engine
    assert result["max_loss_diff"] <= 1e-5
    assert max(result["weight_diff"]) <= 1e-5
    assert result["loss_torch"][-1] < result["loss_torch"][0]
    # the shifts were applied: the first loss differs from the same step without them
    plain = lockstep(real_data(), config=config.replace(augment_shift=0), steps=1)
    assert abs(plain["loss_torch"][0] - result["loss_torch"][0]) > 1e-4


def _weights(backend, state):
    pkg = importlib.import_module(f"fashion_{backend}")
    return pkg.to_state_dict(state.model) if backend == "torch" else pkg.to_state_dict(state.params)


@pytest.mark.data
@pytest.mark.parametrize("jax_twin", ["flax", "nnx"])
def test_one_epoch_with_shifts_through_each_twins_train_epoch_ends_at_the_same_weights(jax_twin):
    # a JAX twin's scanned epoch and the torch twin's loop, both fed the loop's offsets (S, B, 2)
    import fashion_torch
    import fashion_torch.train as torch_train
    from fashion_common.data import batch_order

    flax_train = importlib.import_module(f"fashion_{jax_twin}.train")
    data = real_data().limit(1280, 100)
    config = _sgd_with_shifts(epochs=1)
    order = batch_order(config.seed, 1, 1280, 64)  # (20, 64)
    shifts = shift_offsets(config.seed, 1, 20, 64, config.augment_shift)  # (20, 64, 2)
    t_state = torch_train.create_train_state(config, total_steps=20)
    f_state = flax_train.create_train_state(
        config, total_steps=20, state_dict=fashion_torch.to_state_dict(t_state.model)
    )
    t_state, t_metrics = torch_train.train_epoch(t_state, torch_train.put_data(data), order, config, None, shifts)
    f_state, f_metrics = flax_train.train_epoch(f_state, flax_train.put_data(data), order, config, None, shifts)
    t_w, f_w = _weights("torch", t_state), _weights(jax_twin, f_state)
    assert max(float(np.max(np.abs(t_w[k] - f_w[k]))) for k in t_w) <= 1e-5  # same bound as the lockstep
    assert abs(t_metrics["train_loss"] - f_metrics["train_loss"]) <= 1e-5
    # and the shifts mattered: without them the weights end farther apart than the twins' bound
    # (measured ~9e-5 after 20 steps)
    f_plain = flax_train.create_train_state(
        config,
        total_steps=20,
        state_dict=fashion_torch.to_state_dict(torch_train.create_train_state(config, total_steps=20).model),
    )
    f_plain, _ = flax_train.train_epoch(f_plain, flax_train.put_data(data), order, config, None, None)
    p_w = _weights(jax_twin, f_plain)
    assert max(float(np.max(np.abs(p_w[k] - f_w[k]))) for k in p_w) > 2e-5


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_benchmark_epochs_and_time_to_accuracy_train_with_the_recipes_shifts_as_the_loop_does(backend, monkeypatch):
    # The benchmark drives train_epoch itself (to time it); it must feed the same offsets the loop feeds,
    # or it times (and reports the accuracy of) a recipe without its augmentation.
    from twin_data import separable_set

    from fashion_common.loop import epoch_shifts
    from fashion_compare import benchmark

    train = importlib.import_module(f"fashion_{backend}.train")
    seen = []
    real_epoch = train.train_epoch

    def recording_epoch(state, data, order, config, progress=None, shifts=None):
        seen.append(None if shifts is None else np.asarray(shifts).copy())
        return real_epoch(state, data, order, config, progress, shifts)

    monkeypatch.setattr(train, "train_epoch", recording_epoch)
    data = separable_set(n_per_class=8)  # 80 images
    config = TrainConfig(epochs=1, batch_size=16, device="cpu", augment_shift=1)
    benchmark.twin_epoch_fn(backend, data, "cpu", config)(0)
    benchmark.time_to_accuracy(backend, data, "cpu", target=0.0, config=config, log=lambda line: None)
    steps = len(data.train_labels) // 16
    assert len(seen) == 3 and all(s is not None and s.shape == (steps, 16, 2) for s in seen)
    np.testing.assert_array_equal(
        seen[-1], epoch_shifts(config, 1, steps)
    )  # epoch 1 of time-to-accuracy: the loop's epoch-1 offsets
