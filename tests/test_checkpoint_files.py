"""Checkpoint paths that are not checkpoints: folders, FIFOs, devices, sidecars, torch pickles and
non-finite weights each fail at once with one precise CheckpointError."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import safetensors.numpy
from backends import BACKEND_NAMES, get_backend

from fashion_common import checkpoint as canonical
from fashion_common.errors import CheckpointError


def _good_state():
    return get_backend("torch").to_state_dict(get_backend("torch").init(seed=0))


# ----------------------------------------------------------------------------- checkpoint paths that are not files


def _load_error(name, path) -> str:
    with pytest.raises(CheckpointError) as info:
        get_backend(name).load(path)
    return str(info.value)


def test_a_directory_as_checkpoint_says_so(tmp_path):
    messages = {name: _load_error(name, tmp_path) for name in BACKEND_NAMES}
    assert messages["torch"] == messages["flax"] == f"checkpoint {tmp_path} is a directory, not a file"


def test_a_fifo_as_checkpoint_fails_at_once_without_opening_it(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    start = time.monotonic()
    messages = {name: _load_error(name, fifo) for name in BACKEND_NAMES}  # open() on a FIFO would block forever
    assert time.monotonic() - start < 5
    assert messages["torch"] == messages["flax"] == f"checkpoint {fifo} is not a regular file (a FIFO)"


def test_a_device_file_as_checkpoint_is_not_a_regular_file():
    messages = {name: _load_error(name, "/dev/null") for name in BACKEND_NAMES}
    assert messages["torch"] == messages["flax"] == "checkpoint /dev/null is not a regular file (a device file)"


def test_a_sidecar_given_as_the_checkpoint_names_the_mix_up(tmp_path):
    path = tmp_path / "m.safetensors"
    canonical.write_train_state(path, {"momentum/x": np.zeros(2, np.float32)}, {"x": 1})
    with pytest.raises(CheckpointError, match="is a training-state sidecar, not a model checkpoint"):
        canonical.read_state(canonical.train_state_path(path))


# ----------------------------------------------------------------------------- a PyTorch pickle


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
def test_a_torch_save_file_read_by_the_canonical_reader_names_the_convert_command(tmp_path, legacy):
    import torch

    path = tmp_path / "model_weights.pth"
    state = {k: torch.from_numpy(v) for k, v in _good_state().items()}
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)  # the tutorial's "Save and load the model"
    assert path.read_bytes()[:4] == b"PK\x03\x04" if not legacy else path.read_bytes()[0] == 0x80
    want = (
        f"{path} is a PyTorch pickle (torch.save), not a safetensors checkpoint; convert it with "
        f"`fashion-twins convert {path} OUT.safetensors`"
    )
    with pytest.raises(CheckpointError) as info:
        canonical.read_state(path)
    assert str(info.value) == want
    # The flax twin never imports torch, so this is its whole answer.
    assert _load_error("flax", path) == want


def test_a_safetensors_file_whose_header_length_starts_like_a_pickle_is_still_read(tmp_path):
    """0x80 0x02 is also a plausible little-endian header length (640): safetensors is tried by its form first."""
    path = tmp_path / "m.safetensors"
    state = _good_state()
    for pad in range(0, 200):
        blob = safetensors.numpy.save(state, metadata={"pad": "x" * pad})
        if blob[0] == 0x80 and 2 <= blob[1] <= 5:
            break
    else:
        pytest.fail("no padding gave a header length starting with 0x80 0x02..05")
    path.write_bytes(blob)
    loaded, _ = canonical.read_state(path)
    np.testing.assert_array_equal(loaded["linear_relu_stack.0.bias"], state["linear_relu_stack.0.bias"])


# ----------------------------------------------------------------------------- non-finite weights


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_twins_refuse_nonfinite_weights_naming_the_tensor(tmp_path, value):
    state = _good_state()
    state["linear_relu_stack.2.weight"][3, 7] = value
    path = tmp_path / "diverged.safetensors"
    safetensors.numpy.save_file(state, str(path))
    messages = {name: _load_error(name, path) for name in BACKEND_NAMES}
    assert messages["torch"] == messages["flax"]
    assert f"{path}: tensor 'linear_relu_stack.2.weight' holds 1 non-finite values (NaN or Inf)" in messages["torch"]
    loaded, _ = canonical.read_state(path, allow_nonfinite=True)  # the opt-out, for inspecting a diverged run
    assert not np.isfinite(loaded["linear_relu_stack.2.weight"]).all()
