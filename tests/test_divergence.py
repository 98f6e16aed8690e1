"""A run that diverges: a NaN or Inf loss stops training with one line and keeps the last good checkpoint
(and never claims an earlier run's file as its own)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from backends import BACKEND_NAMES, get_backend

from fashion_common import loop
from fashion_common.config import TrainConfig
from fashion_common.data import FashionData
from fashion_common.errors import NonFiniteLossError


def _good_state():
    return get_backend("torch").to_state_dict(get_backend("torch").init(seed=0))


# ----------------------------------------------------------------------------- non-finite loss


def _fake_epochs(monkeypatch, backend, losses, saved):
    """The twin's own train_and_evaluate, its epochs reporting the given train losses; save records (epoch, path)."""
    import importlib

    train = importlib.import_module(f"fashion_{backend}.train")
    real_epoch = train.train_epoch

    def train_epoch(state, data, order, config, progress, shifts=None):
        state, metrics = real_epoch(state, data, order, config, progress, shifts)
        return state, {**metrics, "train_loss": losses[len(saved)]}

    def save_train_state(state, path, counters):
        Path(path).write_text(json.dumps(counters["epoch"]))
        saved.append(counters["epoch"])

    monkeypatch.setattr(train, "train_epoch", train_epoch)
    monkeypatch.setattr(train, "save_train_state", save_train_state)
    return train


def _tiny_data():
    images = np.zeros((8, 28, 28), np.uint8)
    labels = np.arange(8, dtype=np.int32) % 10
    return FashionData(images, labels, images, labels, "tiny")


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_nonfinite_train_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, bad, backend):
    out, saved = tmp_path / "m.safetensors", []
    config = TrainConfig(epochs=3, batch_size=4, device="cpu", augment_shift=0)
    train = _fake_epochs(monkeypatch, backend, [0.5, bad, 0.1], saved)
    with pytest.raises(NonFiniteLossError) as info:
        train.train_and_evaluate(config, _tiny_data(), out=str(out), quiet=True, log=lambda s: None)
    assert str(info.value) == (
        f"epoch 2: train_loss is {bad}, training diverged; {out} was not overwritten, it keeps the last good "
        "epoch; lower --lr or check the data"
    )
    assert saved == [1] and out.read_text() == "1"  # epoch 1's file, untouched by epoch 2


@pytest.mark.parametrize("backend_name", BACKEND_NAMES)
def test_a_twin_trained_at_an_absurd_learning_rate_stops_with_nonfinite_loss(tmp_path, backend_name):
    import importlib

    from twin_data import separable_set

    train = importlib.import_module(f"fashion_{backend_name}.train")
    out = tmp_path / "m.safetensors"
    # SGD at lr 1e30: the first steps overflow float32 (weights ~1e30, logits ~1e60 = inf), so loss is NaN in epoch 1.
    config = TrainConfig(
        epochs=2,
        batch_size=32,
        optimizer="sgd",
        lr=1e30,
        schedule="constant",
        limit_train=64,
        limit_test=20,
        device="cpu",
    )
    with pytest.raises(NonFiniteLossError, match=r"^epoch 1: (train|test)_loss is (nan|inf)"):
        train.train_and_evaluate(config, separable_set(), out=str(out), quiet=True, log=lambda s: None)
    assert not out.exists()


def test_a_fresh_run_that_diverges_in_its_first_epoch_does_not_claim_the_existing_out_as_its_own():
    fresh = loop.Run(data=None, val=None, steps_per_epoch=1, total_steps=2, out="old.safetensors")
    nan = {"train_loss": float("nan"), "train_accuracy": 0.1}
    with pytest.raises(NonFiniteLossError) as e:
        loop.epoch_row(1, 0.0, nan, {"test_loss": 1.0, "test_accuracy": 0.1}, None, fresh)
    assert "old.safetensors" not in str(e.value)  # that file is an earlier run's, not this one's last good epoch
    with pytest.raises(NonFiniteLossError, match="old.safetensors was not overwritten, it keeps the last good epoch"):
        loop.epoch_row(2, 0.0, nan, {"test_loss": 1.0, "test_accuracy": 0.1}, None, fresh)  # epoch 1 was saved
