"""Bytes that changed after writing are caught: every file we write carries a sha256 of its tensors and header.

safetensors has no checksum of its own; fashion_common.checkpoint adds one (header field `sha256`)
and verifies it on every read, of weights and of the training-state sidecar alike.
"""

from __future__ import annotations

import importlib
import json
import re

import numpy as np
import pytest
import safetensors.numpy
import torch
from clitools import assert_one_error_line, cli, needs_data
from PIL import Image

from fashion_common import checkpoint as canonical
from fashion_common.config import TrainConfig
from fashion_common.data import FashionData
from fashion_common.errors import CheckpointError
from fashion_common.spec import BACKENDS, DEFAULT_SPEC, ModelSpec, checkpoint_shapes

TINY = ModelSpec(image_size=(4, 4), hidden_sizes=(3,), num_classes=2)  # a 139-byte tensor section: every bit is cheap


def _weights(spec: ModelSpec, seed: int = 0, scale: float = 0.05) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (scale * rng.standard_normal(s)).astype(np.float32) for k, s in checkpoint_shapes(spec).items()}


def test_every_single_bit_flip_anywhere_in_a_checkpoint_is_a_checkpoint_error_naming_the_file(tmp_path):
    path = tmp_path / "m.safetensors"
    canonical.write_state(path, _weights(TINY), TINY, {"step": "7"})
    good = path.read_bytes()
    assert canonical.read_state(path, check_model=False)[1] == TINY
    loaded = []
    for position in range(len(good)):  # header length, JSON header with the metadata, tensor bytes
        for bit in (position % 8, 7 - position % 8):
            flipped = bytearray(good)
            flipped[position] ^= 1 << bit
            path.write_bytes(bytes(flipped))
            try:
                canonical.read_state(path, check_model=False)
                loaded.append((position, bit))
            except CheckpointError as e:
                assert str(path) in str(e)
    assert loaded == []  # no flip of any byte, of two bits each, goes unnoticed


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_both_twins_refuse_a_checkpoint_whose_tensor_bytes_changed(tmp_path, backend):
    twin = importlib.import_module(f"fashion_{backend}")
    path = tmp_path / "m.safetensors"
    canonical.write_state(path, _weights(DEFAULT_SPEC), DEFAULT_SPEC)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10  # one bit of the last weight: a value that still looks plausible
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match the sha256 digest in its header") as e:
        twin.load_checkpoint(path)
    assert str(path) in str(e.value)


def test_a_sidecar_whose_bytes_changed_is_refused_before_resuming(tmp_path):
    path = tmp_path / "m.safetensors"
    counters = {"backend": "torch", "epoch": 0, "step": 0, "optimizer_step": 3, "config": {}, "history": []}
    slots = {"exp_avg/linear_relu_stack.4.bias": np.ones(2, np.float32)}
    canonical.write_checkpoint(path, _weights(TINY), TINY, slots, {**counters, "run_id": "ab12"})
    side = canonical.train_state_path(path)
    data = bytearray(side.read_bytes())
    data[-1] ^= 0x01
    side.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{side}: the training state's bytes do not match"):
        canonical.read_checkpoint(path, check_model=False)


def test_a_file_written_without_a_digest_loads_and_says_so_once(tmp_path, capsys):
    path = tmp_path / "theirs.safetensors"
    safetensors.numpy.save_file(_weights(DEFAULT_SPEC), str(path))  # another tool: no digest in the header
    for _ in range(3):
        state, spec = canonical.read_state(path)
    assert spec == DEFAULT_SPEC and state["linear_relu_stack.0.weight"].shape == (512, 784)
    notes = capsys.readouterr().err.strip().splitlines()
    assert notes == [
        f"note: {path} has no sha256 digest in its header (not written by fashion-twins); its bytes cannot be verified"
    ]


def test_the_digest_leaves_the_file_loadable_strictly_into_the_tutorial_class(tmp_path):
    import safetensors.torch

    from fashion_torch.model import NeuralNetwork

    path = tmp_path / "m.safetensors"
    canonical.write_state(path, _weights(DEFAULT_SPEC), DEFAULT_SPEC)
    model = NeuralNetwork()
    model.load_state_dict(safetensors.torch.load_file(str(path)), strict=True)
    assert torch.equal(
        model.linear_relu_stack[4].bias, torch.from_numpy(_weights(DEFAULT_SPEC)["linear_relu_stack.4.bias"])
    )


@needs_data
@pytest.mark.parametrize("backend", ["torch", "flax"])
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_evaluate_with_a_non_finite_test_loss_is_an_error_not_a_result(tmp_path, backend):
    path = tmp_path / "huge.safetensors"
    weights = _weights(DEFAULT_SPEC)
    weights["linear_relu_stack.4.weight"] *= np.float32(1e37)  # finite weights whose logits overflow to inf
    canonical.write_state(path, weights, DEFAULT_SPEC)
    result = cli("evaluate", "--backend", backend, path, "--limit-test", 100)
    assert_one_error_line(result, str(path), "test_loss is", "on the 100 test images")
    assert result.stdout == ""


# ----------------------------------------------------------------------------- bytes that pass the digest but lie


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_digest_valid_checkpoint_this_network_cannot_be_is_one_line_naming_the_file_and_field(
    tmp_path, backend, command
):
    """num_classes 7 with a (7, 512) last layer: self-consistent and digest-valid, yet no Fashion-MNIST model."""
    spec = ModelSpec(num_classes=7)
    path = tmp_path / "seven.safetensors"
    canonical.write_state(path, _weights(spec), spec)
    image = tmp_path / "blank.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    extra = [image] if command == "predict" else []
    result = cli(command, "--backend", backend, path, *extra)
    assert_one_error_line(result, str(path), "header field 'num_classes' is '7'; expected '10'")
    assert result.stdout == ""


@pytest.fixture(scope="module")
def trained_pairs(tmp_path_factory):
    """One real 1-epoch run per twin (2 steps of 64 images, AdamW): {backend: its checkpoint pair's two files}."""
    folder, pairs = tmp_path_factory.mktemp("pairs"), {}
    for backend in BACKENDS:
        train, config, data = _run_parts(backend)
        out = folder / backend / "m.safetensors"
        out.parent.mkdir()
        train.train_and_evaluate(config, data, out=out, quiet=True, log=lambda line: None)
        pairs[backend] = (out, canonical.train_state_path(out))
    return pairs


def _run_parts(backend: str):
    """(the twin's train module, the run's config, its 128 random images)."""
    train = importlib.import_module(f"fashion_{backend}.train")
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (128, 28, 28), dtype=np.uint8), rng.integers(0, 10, 128)
    data = FashionData(images, labels, images[:16], labels[:16])
    return train, TrainConfig(epochs=1, batch_size=64, optimizer="adamw", device="cpu", augment_shift=0), data


def _sidecar(tmp_path, backend: str, pairs: dict):
    """A fresh copy of the twin's trained pair in tmp_path/<backend>/; returns (train module, config, data, out)."""
    out = tmp_path / backend / "m.safetensors"
    out.parent.mkdir()
    for source, dest in zip(pairs[backend], (out, canonical.train_state_path(out)), strict=True):
        dest.write_bytes(source.read_bytes())
    return (*_run_parts(backend), out)


def _redigest(side, edit_slots=None, edit_counters=None) -> None:
    """Edit the sidecar's slots or counters, then write it back with a fresh, valid digest (what an editor would)."""
    tensors, metadata = canonical._read(side, "training state")
    counters = json.loads(metadata["counters"])
    if edit_slots is not None:
        edit_slots(tensors)
    if edit_counters is not None:
        edit_counters(counters)
    metadata = {k: v for k, v in metadata.items() if k != canonical.DIGEST_FIELD}
    side.write_bytes(canonical._serialize(tensors, {**metadata, "counters": json.dumps(counters, sort_keys=True)}))


def _past_the_end(c):
    c.update(epoch=2, step=4, optimizer_step=4, history=[*c["history"], {**c["history"][0], "epoch": 2}])


# edit -> the words every twin's refusal holds (the file is named too)
SIDECAR_EDITS = {
    "negative step": ({"step": -1}, "counters field 'step' is -1"),
    "step not the run's": ({"step": 3, "optimizer_step": 3}, "counters field 'step' is 3; expected 2 (epoch 1 x 2"),
    "optimizer_step apart from step": ({"optimizer_step": 7}, "counters field 'optimizer_step' is 7; expected 2"),
    "an epoch past the run's end": (_past_the_end, "counters field 'epoch' is 2; expected an epoch in 0..1"),
}


@pytest.mark.parametrize("case", list(SIDECAR_EDITS))
def test_an_edited_and_re_digested_sidecar_is_refused_alike_by_every_twin(tmp_path, trained_pairs, case):
    edit, words = SIDECAR_EDITS[case]
    messages = {}
    for backend in BACKENDS:
        train, config, data, out = _sidecar(tmp_path, backend, trained_pairs)
        _redigest(canonical.train_state_path(out), edit_counters=edit if callable(edit) else lambda c: c.update(edit))
        with pytest.raises(CheckpointError) as info:
            train.train_and_evaluate(config, data, resume=out, quiet=True, log=lambda line: None)
        messages[backend] = str(info.value).replace(str(out.parent), "DIR")
        assert words in messages[backend], (backend, messages[backend])
    assert len(set(messages.values())) == 1, messages  # one rule, one message


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_sidecar_whose_optimizer_slot_or_schedule_was_edited_is_refused_and_an_unedited_one_resumes(
    tmp_path, trained_pairs, backend
):
    train, config, data, out = _sidecar(tmp_path, backend, trained_pairs)
    side = canonical.train_state_path(out)
    good = side.read_bytes()
    train.train_and_evaluate(config, data, resume=out, quiet=True, log=lambda line: None)  # unedited: accepted

    def widen(tensors):  # one slot of another shape: a sidecar of another network, re-digested
        key = max(k for k in tensors if not k.startswith(canonical.WEIGHTS_PREFIX) and tensors[k].size > 1)
        tensors[key] = np.zeros(tensors[key].size + 1, tensors[key].dtype)

    _redigest(side, edit_slots=widen)
    with pytest.raises(CheckpointError, match=r"optimizer slot .* is float32 \(\d+,\); expected float32 \(") as info:
        train.train_and_evaluate(config, data, resume=out, quiet=True, log=lambda line: None)
    assert str(side) in str(info.value)

    # A schedule from another run: torch's scheduler state of a 9-step cosine; optax's schedule count at 9.
    side.write_bytes(good)
    if backend == "torch":
        edit = {"counters": lambda c: c["scheduler"].update(T_max=9)}
        words = "counters field 'scheduler' key 'T_max' is 9; expected 2, this run's"
    else:
        edit = {"slots": lambda t: t.update({k: np.full_like(v, 9) for k, v in t.items() if k.endswith("count")})}
        words = "is [9]; expected 2"
    _redigest(side, edit_slots=edit.get("slots"), edit_counters=edit.get("counters"))
    with pytest.raises(CheckpointError, match=re.escape(words)):
        train.train_and_evaluate(config, data, resume=out, quiet=True, log=lambda line: None)
