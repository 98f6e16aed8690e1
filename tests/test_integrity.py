"""Bytes that changed after writing are caught: every file we write carries a sha256 of its tensors and header.

safetensors has no checksum of its own; fashion_common.checkpoint adds one (header field `sha256`)
and verifies it on every read, of weights and of the training-state sidecar alike.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import safetensors.numpy
import torch
from clitools import assert_one_error_line, cli, needs_data

from fashion_common import checkpoint as canonical
from fashion_common.errors import CheckpointError
from fashion_common.spec import DEFAULT_SPEC, ModelSpec, checkpoint_shapes

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
def test_evaluate_with_a_non_finite_test_loss_is_an_error_not_a_result(tmp_path, backend):
    path = tmp_path / "huge.safetensors"
    weights = _weights(DEFAULT_SPEC)
    weights["linear_relu_stack.4.weight"] *= np.float32(1e37)  # finite weights whose logits overflow to inf
    canonical.write_state(path, weights, DEFAULT_SPEC)
    result = cli("evaluate", "--backend", backend, path, "--limit-test", 100)
    assert_one_error_line(result, str(path), "test_loss is", "on the 100 test images")
    assert result.stdout == ""
