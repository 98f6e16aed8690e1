"""The tutorial's own files: `torch.save(model.state_dict(), "model_weights.pth")` and spec-less safetensors.

The .pth is read with torch.load(weights_only=True) only: a whole pickled model or a crafted
pickle is refused and never executed. `convert` writes the canonical checkpoint; a file without a
spec in its header loads with the spec --output-activation names, and the command says so.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from clitools import assert_ok, assert_one_error_line, cli, needs_data
from safetensors.torch import save_file
from torch import nn

import fashion_torch
from fashion_common import checkpoint as canonical
from fashion_common.checkpoint import is_torch_pickle
from fashion_common.errors import CheckpointError
from fashion_torch.pth import read_pth


class TutorialNetwork(nn.Module):
    """The tutorial's "Define the Class" cell, with or without its final ReLU."""

    def __init__(self, final_relu: bool = False):
        super().__init__()
        self.flatten = nn.Flatten()
        layers = [nn.Linear(28 * 28, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)]
        self.linear_relu_stack = nn.Sequential(*layers, *([nn.ReLU()] if final_relu else []))

    def forward(self, x):
        return self.linear_relu_stack(self.flatten(x))


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    """(model, path of its torch.save'd state_dict), as the "Save and load the model" tutorial writes it."""
    torch.manual_seed(0)
    model = TutorialNetwork()
    path = tmp_path_factory.mktemp("pth") / "model_weights.pth"
    torch.save(model.state_dict(), path)
    return model, path


class Exploit:
    """Unpickling this runs os.system; weights_only=True must refuse it without running it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------- fashion_torch/pth.py


def test_read_pth_returns_the_tutorial_state_dict_as_float32_arrays(tutorial):
    model, path = tutorial
    assert is_torch_pickle(path)
    state = read_pth(path)
    assert set(state) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert state[key].dtype == np.float32
        np.testing.assert_array_equal(state[key], value.numpy())


def test_torch_twin_loads_the_pth_and_gives_the_tutorial_models_logits(tutorial):
    model, path = tutorial
    twin = fashion_torch.load_checkpoint(path)
    x = torch.rand(4, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # The same weights and the same ops in the same order: equal to the last bit.
        assert torch.equal(twin(x), model(x))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_a_crafted_pickle_is_refused_and_never_executed(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"linear_relu_stack.0.weight": Exploit(marker)}, protocol=protocol))
    # Protocol 2 names the blocked global (posix.system); protocol 5 stops earlier, at an opcode it does not allow.
    with pytest.raises(
        CheckpointError,
        match=r"evil\.pth is not a state_dict torch can load safely .*(posix\.system|Unsupported operand)",
    ):
        read_pth(path)
    with pytest.raises(CheckpointError):
        fashion_torch.load_checkpoint(path)
    assert not marker.exists()
    assert_one_error_line(cli("convert", path, tmp_path / "out.safetensors"), "weights_only=True refused it")
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_a_whole_pickled_model_is_refused_with_the_fix(tmp_path):
    torch.save(TutorialNetwork(), tmp_path / "whole.pth")
    with pytest.raises(
        CheckpointError, match=r"Unsupported global.*TutorialNetwork.*save model\.state_dict\(\), not the model"
    ):
        read_pth(tmp_path / "whole.pth")


@pytest.mark.parametrize(
    "obj, fragment",
    [
        ([torch.zeros(3)], "holds a list, not a state_dict"),
        ({"model": {"w": torch.zeros(3)}}, "entry 'model' is a dict, not a tensor"),
        ({"w": torch.zeros(3, dtype=torch.int64)}, "key 'w' has dtype int64, expected float32"),
        ({"w": torch.zeros(3, dtype=torch.float64)}, "key 'w' has dtype float64, expected float32"),  # as .safetensors
    ],
)
def test_anything_but_a_dict_of_float_tensors_is_refused_naming_what_it_is(tmp_path, obj, fragment):
    torch.save(obj, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match=fragment):
        read_pth(tmp_path / "x.pth")


def test_a_tutorial_style_pth_of_another_network_says_its_layer_sizes_and_the_supported_ones(tmp_path):
    other = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    state = {f"linear_relu_stack.{k}": v for k, v in nn.Sequential(*list(other)[1:]).state_dict().items()}
    torch.save(state, tmp_path / "small.pth")  # the tutorial's class with one hidden layer of 128
    assert_one_error_line(
        cli("convert", tmp_path / "small.pth", tmp_path / "o.safetensors"),
        "small.pth holds a 784-128-10 network (2 Linear layers)",
        "supports the tutorial's 784-512-512-10",
    )
    torch.save(nn.Sequential(nn.Linear(4, 2)).state_dict(), tmp_path / "other.pth")  # other key names alike
    assert_one_error_line(cli("evaluate", "--backend", "torch", tmp_path / "other.pth"), "holds a 4-2 network")


def test_a_state_that_is_no_stack_of_linear_layers_still_names_the_first_wrong_key(tmp_path):
    torch.save({"embedding.weight": torch.zeros(3, 4)}, tmp_path / "other.pth")
    assert_one_error_line(
        cli("convert", tmp_path / "other.pth", tmp_path / "o.safetensors"), "missing key 'linear_relu_stack.0.bias'"
    )


# ----------------------------------------------------------------------------- convert and --output-activation


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_convert_writes_the_canonical_checkpoint_with_the_spec_in_its_header(tutorial, tmp_path):
    model, path = tutorial
    result = cli("convert", path, tmp_path / "m.safetensors")
    assert_ok(result)
    assert (
        result.stdout.strip()
        == f"[convert] wrote {tmp_path / 'm.safetensors'} (669,706 parameters, output activation none) from {path}"
    )
    assert canonical.header_has_spec(tmp_path / "m.safetensors")
    state, spec = canonical.read_state(tmp_path / "m.safetensors")
    assert spec.output_activation is None
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(state[key], value.numpy())

    assert_ok(cli("convert", path, tmp_path / "relu.safetensors", "--output-activation", "relu"))
    assert canonical.read_state(tmp_path / "relu.safetensors")[1].output_activation == "relu"


def test_convert_to_pth_writes_the_tutorials_format_which_its_class_loads_with_weights_only(tutorial, tmp_path):
    model, path = tutorial
    assert_ok(cli("convert", path, tmp_path / "m.safetensors"))
    for name in ("out.pth", "out.pt"):
        result = cli("convert", tmp_path / "m.safetensors", tmp_path / name)
        assert_ok(result)
        assert "the tutorial's state_dict" in result.stdout
        assert is_torch_pickle(tmp_path / name)
        loaded = torch.load(tmp_path / name, weights_only=True)  # the tutorial's own reading of the file
        assert list(loaded) == list(model.state_dict())  # a plain dict, in the class's own key order
        fresh = TutorialNetwork()
        fresh.load_state_dict(loaded, strict=True)
        x = torch.rand(5, 1, 28, 28)
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)  # the same float32 weights: identical


def test_convert_refuses_an_out_extension_it_does_not_write_naming_the_two_it_does(tutorial, tmp_path):
    _, path = tutorial
    for name in ("m.bin", "m.safetensor", "m"):
        assert_one_error_line(
            cli("convert", path, tmp_path / name), "argument OUT", ".safetensors (the canonical checkpoint)", ".pth/.pt"
        )
        assert not (tmp_path / name).exists()


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_convert_refuses_writing_over_its_own_input(tutorial, tmp_path):
    _, path = tutorial
    link = tmp_path / "same.pth"
    link.symlink_to(path)
    before = path.read_bytes()
    assert_one_error_line(cli("convert", path, link), "OUT", "IN", "same file")
    assert path.read_bytes() == before


def test_header_has_spec_is_false_for_a_users_own_save_file_and_for_non_safetensors(tutorial, tmp_path):
    model, path = tutorial
    save_file(model.state_dict(), tmp_path / "own.safetensors")
    assert not canonical.header_has_spec(tmp_path / "own.safetensors")
    assert not canonical.header_has_spec(path)
    assert not canonical.header_has_spec(tmp_path / "missing")


@needs_data
@pytest.mark.parametrize("backend", ["torch", "flax"])
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_evaluate_says_which_spec_it_assumed_for_a_spec_less_file_and_obeys_the_flag(tutorial, tmp_path, backend):
    model, _ = tutorial
    save_file(model.state_dict(), tmp_path / "own.safetensors")  # the user's own save: no spec in the header
    plain = cli("evaluate", "--backend", backend, tmp_path / "own.safetensors", "--limit-test", 64)
    assert_ok(plain)
    own = tmp_path / "own.safetensors"
    assert plain.stderr.strip().splitlines() == [
        f"note: {own} has no sha256 digest in its header (not written by fashion-twins); its bytes cannot be verified",
        f"note: {own} has no model spec in its header; assumed output activation none "
        "(--output-activation relu for the other)",
    ]
    relu = cli(
        "evaluate",
        "--backend",
        backend,
        tmp_path / "own.safetensors",
        "--limit-test",
        64,
        "--output-activation",
        "relu",
    )
    assert_ok(relu)
    assert "assumed output activation relu" in relu.stderr
    # A final ReLU clips negative logits to 0, so the loss of the same weights differs.
    assert plain.stdout.split("test_loss ")[1][:6] != relu.stdout.split("test_loss ")[1][:6]


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_a_fifo_given_as_checkpoint_is_never_opened_for_sniffing(tmp_path):
    """Opening a FIFO blocks until a writer comes: the spec and pickle sniffers must stat first."""
    os.mkfifo(tmp_path / "pipe")
    assert not canonical.header_has_spec(tmp_path / "pipe")
    assert not is_torch_pickle(tmp_path / "pipe")
    assert_one_error_line(cli("convert", tmp_path / "pipe", tmp_path / "o.safetensors"), "IN", "is not a regular file")
