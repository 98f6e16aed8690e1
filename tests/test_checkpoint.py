"""The one checkpoint format: any twin writes it, every twin and the tutorial's own class read it.

Bad files fail the same way in all three twins, with a CheckpointError that names the key, before any
model is built; saves are atomic. Nothing anywhere unpickles.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
from backends import BACKEND_NAMES, get_backend, image_batch, max_abs_diff
from torch import nn

from fashion_common import checkpoint as canonical
from fashion_common.errors import CheckpointError, WriteError
from fashion_common.spec import DEFAULT_SPEC, ModelSpec

ROOT = Path(__file__).resolve().parent.parent

# Cross-framework logits: the float32 summation-order argument of test_parity.py (TOL there).
TOL = 1e-6


# ----------------------------------------------------------------------------- the tutorial's classes, verbatim


class NeuralNetwork(nn.Module):
    """The Quickstart tutorial's model, as the tutorial writes it."""

    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(28 * 28, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, 10),
        )

    def forward(self, x):
        x = self.flatten(x)
        logits = self.linear_relu_stack(x)
        return logits


class NeuralNetworkWithOutputReLU(nn.Module):
    """The "Define the Class" cell's variant: a ReLU after the last Linear."""

    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(28 * 28, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, 10),
            nn.ReLU(),
        )

    def forward(self, x):
        x = self.flatten(x)
        logits = self.linear_relu_stack(x)
        return logits


TUTORIAL_CLASSES = {None: NeuralNetwork, "relu": NeuralNetworkWithOutputReLU}  # by spec.output_activation


def tutorial_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def x():
    return image_batch(16, seed=3)


def net_for(backend, spec: ModelSpec):
    """A net of `backend` with `spec`: its own init for the default spec, else torch's init converted
    (a Flax init costs a compile per spec; the save under test is the twin's own either way)."""
    if spec == DEFAULT_SPEC:
        return backend.init(seed=0)
    torch_backend = get_backend("torch")
    return backend.from_state_dict(torch_backend.to_state_dict(torch_backend.init(seed=0, spec=spec)), spec)


# ----------------------------------------------------------------------------- good files

PAIRS = [(w, r) for w in BACKEND_NAMES for r in BACKEND_NAMES]


@pytest.mark.parametrize("writer, reader", PAIRS, ids=[f"{w}-to-{r}" for w, r in PAIRS])
def test_checkpoint_written_by_either_twin_loads_into_either_twin(tmp_path, x, writer, reader):
    writer, reader = get_backend(writer), get_backend(reader)
    spec = ModelSpec(output_activation="relu")  # not the default: the spec must ride in the header
    net = net_for(writer, spec)
    path = writer.save(net, tmp_path / "model.safetensors")
    loaded = reader.load(path)
    assert reader.spec_of(loaded) == spec
    written, read = writer.to_state_dict(net), reader.to_state_dict(loaded)
    assert list(read) == list(written)
    for key in written:
        assert np.array_equal(read[key], written[key]), key  # float32 in, float32 out: bit-exact
    assert max_abs_diff(reader.logits(loaded, x), writer.logits(net, x)) <= TOL


@pytest.mark.parametrize("output_activation", [None, "relu"], ids=["tutorial", "define-the-class"])
def test_checkpoint_written_by_either_twin_loads_strictly_into_the_tutorial_class(
    tmp_path, x, backend, output_activation
):
    spec = ModelSpec(output_activation=output_activation)
    net = net_for(backend, spec)
    path = backend.save(net, tmp_path / "model.safetensors")
    tutorial = TUTORIAL_CLASSES[output_activation]()
    result = tutorial.load_state_dict(safetensors.torch.load_file(path), strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    theirs, ours = tutorial_logits(tutorial, x), backend.logits(net, x)
    if backend.name == "torch":
        np.testing.assert_array_equal(theirs, ours)  # the same torch ops on the same weights
    assert max_abs_diff(theirs, ours) <= TOL
    np.testing.assert_array_equal(theirs.argmax(1), ours.argmax(1))
    if output_activation == "relu":
        assert (theirs >= 0).all() and (theirs == 0).any()  # the trailing ReLU really is there


@pytest.mark.parametrize("output_activation", [None, "relu"], ids=["tutorial", "define-the-class"])
def test_file_saved_from_the_tutorial_class_loads_into_either_twin(tmp_path, x, backend, output_activation):
    torch.manual_seed(0)
    tutorial = TUTORIAL_CLASSES[output_activation]()
    path = tmp_path / "tutorial.safetensors"
    safetensors.torch.save_file(tutorial.state_dict(), str(path))  # no header: the spec must be given
    spec = ModelSpec(output_activation=output_activation)
    net = backend.load(path, spec=None if output_activation is None else spec)
    assert backend.spec_of(net) == spec
    state = backend.to_state_dict(net)
    for key, value in tutorial.state_dict().items():
        assert np.array_equal(state[key], value.numpy()), key
    theirs, ours = tutorial_logits(tutorial, x), backend.logits(net, x)
    assert max_abs_diff(theirs, ours) <= TOL
    np.testing.assert_array_equal(theirs.argmax(1), ours.argmax(1))


# ----------------------------------------------------------------------------- bad files


def _good_state():
    return get_backend("torch").to_state_dict(get_backend("torch").init(seed=0))


def _write_tensors(path, change):
    state = _good_state()
    change(state)
    safetensors.numpy.save_file(state, str(path))


def _write_bytes(path, make):
    path.write_bytes(make())


def _write_header(path, changes):
    """A good state_dict under a full canonical header with `changes` applied (None deletes the field)."""
    metadata = {"format": "fashion-twins/canonical-v1", **DEFAULT_SPEC.to_metadata(), "step": "7"}
    for key, value in changes.items():
        if value is None:
            metadata.pop(key)
        else:
            metadata[key] = value
    safetensors.numpy.save_file(_good_state(), str(path), metadata=metadata)


def _write_spec(path, spec: ModelSpec):
    """A checkpoint of `spec`, written by the format's own writer: header, tensors and digest all agree."""
    rng = np.random.default_rng(0)
    state = {k: rng.standard_normal(s).astype(np.float32) for k, s in canonical.checkpoint_shapes(spec).items()}
    canonical.write_state(path, state, spec)


def _truncated():
    good = safetensors.numpy.save(_good_state())
    return good[: len(good) // 2]


BAD_FILES = [
    (
        "missing key",
        lambda p: _write_tensors(p, lambda s: s.pop("linear_relu_stack.4.bias")),
        "missing key 'linear_relu_stack.4.bias'",
    ),
    (
        "extra key",
        lambda p: _write_tensors(p, lambda s: s.update({"linear_relu_stack.6.weight": np.zeros((10, 10), np.float32)})),
        "unexpected key 'linear_relu_stack.6.weight'",
    ),
    (
        "wrong shape",
        lambda p: _write_tensors(
            p, lambda s: s.update({"linear_relu_stack.2.weight": np.zeros((512, 511), np.float32)})
        ),
        "key 'linear_relu_stack.2.weight' has shape (512, 511), expected (512, 512)",
    ),
    (
        "float64 tensor",
        lambda p: _write_tensors(
            p, lambda s: s.update({"linear_relu_stack.0.bias": s["linear_relu_stack.0.bias"].astype(np.float64)})
        ),
        "key 'linear_relu_stack.0.bias' has dtype float64",
    ),
    ("truncated file", lambda p: _write_bytes(p, _truncated), "is not a readable safetensors checkpoint"),
    (
        "random bytes",
        lambda p: _write_bytes(p, lambda: np.random.default_rng(0).bytes(4096)),
        "is not a readable safetensors checkpoint",
    ),
    ("empty file", lambda p: _write_bytes(p, lambda: b""), "is not a readable safetensors checkpoint"),
    (
        "hidden_sizes not numbers",
        lambda p: _write_header(p, {"hidden_sizes": "wide"}),
        "header field 'hidden_sizes' is 'wide'; expected comma-separated integers from 1 to 2147483647",
    ),
    (
        "image_size with one value",
        lambda p: _write_header(p, {"image_size": "28"}),
        "header field 'image_size' is '28'; expected 2 comma-separated integers",
    ),
    (
        "image_size zero",
        lambda p: _write_header(p, {"image_size": "0,28"}),
        "header field 'image_size' is '0,28'",
    ),
    (
        "num_classes negative",
        lambda p: _write_header(p, {"num_classes": "-10"}),
        "header field 'num_classes' is '-10'; expected an integer from 1 to 2147483647",
    ),
    (
        "num_classes float",
        lambda p: _write_header(p, {"num_classes": "10.0"}),
        "header field 'num_classes' is '10.0'",
    ),
    (
        "num_classes 5000 digits",
        lambda p: _write_header(p, {"num_classes": "9" * 5000}),
        "header field 'num_classes' is '99999",
    ),
    (
        "unknown activation",
        lambda p: _write_header(p, {"activation": "gelu"}),
        "header field 'activation' is 'gelu'; expected one of relu, sigmoid, tanh, binary_step",
    ),
    (
        "unknown output activation",
        lambda p: _write_header(p, {"output_activation": "softmax"}),
        "header field 'output_activation' is 'softmax'; expected one of none, relu",
    ),
    (
        "spec field missing",
        lambda p: _write_header(p, {"num_classes": None}),
        "header field 'num_classes' is missing",
    ),
    (
        "format of another version",
        lambda p: _write_header(p, {"format": "fashion-twins/canonical-v9"}),
        "header field 'format' is 'fashion-twins/canonical-v9'; expected 'fashion-twins/canonical-v1'",
    ),
    (
        "step negative",
        lambda p: _write_header(p, {"step": "-1"}),
        "header field 'step' is '-1'",
    ),
    (
        "step not a number",
        lambda p: _write_header(p, {"step": "ten"}),
        "header field 'step' is 'ten'",
    ),
    (
        "spec disagrees with the tensors",
        lambda p: _write_header(p, {"hidden_sizes": "256,256"}),
        "key 'linear_relu_stack.0.weight' has shape (512, 784), expected (256, 784)",
    ),
    ("missing file", lambda p: None, "checkpoint not found"),
    # Digest-valid files whose spec agrees with their tensors, but that this network cannot be.
    (
        "num_classes 7, digest-valid",
        lambda p: _write_spec(p, ModelSpec(num_classes=7)),
        "header field 'num_classes' is '7'; expected '10': Fashion-MNIST has ten classes",
    ),
    (
        "image_size 14x14, digest-valid",
        lambda p: _write_spec(p, ModelSpec(image_size=(14, 14))),
        "header field 'image_size' is '14,14'; expected '28,28'",
    ),
    (
        "nan weight",
        lambda p: _write_tensors(p, lambda s: s["linear_relu_stack.4.bias"].__setitem__(3, np.nan)),
        "tensor 'linear_relu_stack.4.bias' holds 1 non-finite values",
    ),
]


@pytest.mark.parametrize("case, write, phrase", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_twins_refuse_a_bad_checkpoint_with_the_same_error_before_building_a_model(
    tmp_path, monkeypatch, case, write, phrase
):
    path = tmp_path / "bad.safetensors"
    write(path)
    messages = {}
    for name in BACKEND_NAMES:
        backend = get_backend(name)
        built = []
        real = backend.module.checkpoint.from_state_dict  # where load_checkpoint builds the model / params

        def spy(*args, _real=real, _built=built, **kwargs):
            _built.append(args)
            return _real(*args, **kwargs)

        monkeypatch.setattr(backend.module.checkpoint, "from_state_dict", spy)
        with pytest.raises(CheckpointError) as info:
            backend.load(path)
        assert built == [], f"{name} started building weights from a bad checkpoint"
        messages[name] = str(info.value)
    if case == "pickle file":
        # The torch twin reads pickles through torch.load(weights_only=True) (fashion_torch/pth.py); flax never can.
        assert "weights_only=True refused it" in messages["torch"] and str(path) in messages["torch"]
        messages.pop("torch")
    assert len(set(messages.values())) == 1
    assert phrase in messages["flax"]
    assert str(path) in messages["flax"]  # the error names the file
    assert sorted(os.listdir(tmp_path)) == (
        [] if case == "missing file" else ["bad.safetensors"]
    )  # loading wrote nothing


def test_a_pickle_is_never_unpickled_and_the_canonical_reader_names_the_convert_command(tmp_path, monkeypatch):
    """A plain pickle starts with 0x80 like torch.save's legacy format: the canonical reader (what the flax
    twin uses; the torch twin tries its .pth reader first) refuses it without unpickling anything."""
    path = tmp_path / "bad.safetensors"
    path.write_bytes(pickle.dumps(_good_state()))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(CheckpointError, match=r"is a PyTorch pickle \(torch.save\).*fashion-twins convert"):
        get_backend("flax").load(path)


def test_a_good_checkpoint_does_go_through_the_spied_builder(tmp_path, monkeypatch, backend):
    """The control for the test above: the spy sits where a successful load really builds."""
    path = backend.save(backend.init(seed=0), tmp_path / "good.safetensors")
    built = []
    real = backend.module.checkpoint.from_state_dict
    monkeypatch.setattr(backend.module.checkpoint, "from_state_dict", lambda *a, **k: built.append(a) or real(*a, **k))
    backend.load(path)
    assert len(built) == 1


BAD_STATES = [
    (
        "missing key",
        lambda s: s.pop("linear_relu_stack.0.weight"),
        "state_dict: missing key 'linear_relu_stack.0.weight'",
    ),
    (
        "extra key",
        lambda s: s.update({"flatten.weight": np.zeros(1, np.float32)}),
        "state_dict: unexpected key 'flatten.weight'",
    ),
    (
        "transposed weight",  # the classic conversion bug: a Dense kernel passed as a Linear weight
        lambda s: s.update({"linear_relu_stack.0.weight": s["linear_relu_stack.0.weight"].T}),
        "state_dict: key 'linear_relu_stack.0.weight' has shape (784, 512), expected (512, 784)",
    ),
]


@pytest.mark.parametrize("case, change, message", BAD_STATES, ids=[c[0] for c in BAD_STATES])
def test_twins_refuse_a_bad_state_dict_with_the_same_error(case, change, message):
    state = _good_state()
    change(state)
    messages = {}
    for name in BACKEND_NAMES:
        with pytest.raises(CheckpointError) as info:
            get_backend(name).from_state_dict(state)
        messages[name] = str(info.value)
    assert messages == {name: message for name in BACKEND_NAMES}


def test_flax_to_state_dict_names_a_missing_param_leaf(flax_backend):
    params = flax_backend.init(seed=0).params
    stack = dict(params["params"]["linear_relu_stack"])
    stack["layers_4"] = {"kernel": stack["layers_4"]["kernel"]}  # bias dropped
    with pytest.raises(
        CheckpointError, match=r"missing 'linear_relu_stack/layers_4/bias' \(canonical key 'linear_relu_stack.4.bias'\)"
    ):
        flax_backend.module.to_state_dict({"params": {"linear_relu_stack": stack}})


def test_nnx_to_state_dict_names_a_missing_param_leaf():
    from flax import nnx

    nnx_backend = get_backend("nnx")
    params = nnx.to_pure_dict(nnx.state(nnx_backend.init(seed=0), nnx.Param))
    del params["linear_relu_stack"]["layers"][4]["bias"]
    with pytest.raises(
        CheckpointError, match=r"missing 'linear_relu_stack/layers/4/bias' \(canonical key 'linear_relu_stack.4.bias'\)"
    ):
        nnx_backend.module.to_state_dict(params)


# ----------------------------------------------------------------------------- atomic saves


def test_save_leaves_only_the_checkpoint_in_the_folder(tmp_path, backend):
    net = backend.init(seed=0)
    backend.save(net, tmp_path / "model.safetensors")
    backend.save(net, tmp_path / "model.safetensors")  # overwriting goes through a temp file too
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_failed_save_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch, backend):
    path = tmp_path / "model.safetensors"
    backend.save(backend.init(seed=0), path)
    before = path.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    import fashion_common.checkpoint

    monkeypatch.setattr(fashion_common.checkpoint.os, "fsync", disk_full)
    with pytest.raises(WriteError) as info:
        backend.save(backend.init(seed=1), path)
    assert str(info.value) == f"cannot write {path}: No space left on device"  # names the target, one line
    assert path.read_bytes() == before  # the old checkpoint, whole
    assert os.listdir(tmp_path) == ["model.safetensors"]  # the half-written temp file is gone


def test_twins_refuse_to_save_into_a_missing_folder_with_the_same_error(tmp_path):
    path = tmp_path / "no-such-folder" / "model.safetensors"
    messages = set()
    for name in BACKEND_NAMES:
        backend = get_backend(name)
        with pytest.raises(WriteError, match="does not exist") as info:
            backend.save(backend.init(seed=0), path)
        messages.add(str(info.value))
    assert len(messages) == 1
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- no unpickling anywhere

# Split so that this file does not match its own pattern.
FORBIDDEN = "torch" + ".load("


def test_no_python_file_calls_torch_load_without_weights_only():
    folders = [
        ROOT / name
        for name in (
            "fashion_common",
            "fashion_torch",
            "fashion_flax",
            "fashion_nnx",
            "fashion_compare",
            "fashion_twins",
            "scripts",
            "tests",
        )
    ]
    files = [f for folder in folders if folder.is_dir() for f in sorted(folder.rglob("*.py"))]
    assert any(f.name == "checkpoint.py" for f in files)  # the search really covers the packages
    # A call is allowed only with weights_only=True on the same line: torch's restricted unpickler,
    # which the torch twin's .pth reader (the tutorial's model_weights.pth) uses. A full unpickle never.
    offenders = [
        f"{f.relative_to(ROOT)}:{n}"
        for f in files
        for n, line in enumerate(f.read_text().splitlines(), 1)
        if FORBIDDEN in line and "weights_only=True" not in line
    ]
    assert offenders == [], f"torch.load without weights_only=True unpickles; use safetensors: {offenders}"


def test_a_float16_pth_is_refused_like_a_float16_safetensors_file(tmp_path):
    from fashion_torch.model import NeuralNetwork
    from fashion_torch.pth import read_pth

    path = tmp_path / "half.pth"
    torch.save(NeuralNetwork().half().state_dict(), path)
    with pytest.raises(CheckpointError, match=r"key 'linear_relu_stack.0.weight' has dtype float16, expected float32"):
        read_pth(path)
    st = tmp_path / "half.safetensors"
    safetensors.torch.save_file(NeuralNetwork().half().state_dict(), str(st))
    with pytest.raises(
        CheckpointError, match=r"key 'linear_relu_stack.0.(weight|bias)' has dtype float16, expected float32"
    ):
        canonical.read_state(st)
