"""The network itself, run against all three twins: shapes, parameters, printout, init, bad input, imports."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from backends import BACKEND_NAMES, get_backend, image_batch

from fashion_common.errors import InputDtypeError, InputShapeError
from fashion_common.spec import (
    DEFAULT_SPEC,
    TUTORIAL_PARAMETER_COUNT,
    ModelSpec,
    checkpoint_keys,
    flax_param_path,
    nnx_param_path,
)

ROOT = Path(__file__).resolve().parent.parent

# Written out, as in the optax and flax MNIST tests: three Linear layers, weights plus biases.
EXPECTED_PARAMETERS = (784 + 1) * 512 + (512 + 1) * 512 + (512 + 1) * 10

# The tutorial's `print(model)` (Quickstart and "Build the Neural Network"), character for character.
TUTORIAL_PRINTOUT = """\
NeuralNetwork(
  (flatten): Flatten(start_dim=1, end_dim=-1)
  (linear_relu_stack): Sequential(
    (0): Linear(in_features=784, out_features=512, bias=True)
    (1): ReLU()
    (2): Linear(in_features=512, out_features=512, bias=True)
    (3): ReLU()
    (4): Linear(in_features=512, out_features=10, bias=True)
  )
)"""

# The "Define the Class" cell's printout, whose stack ends in a ReLU after the last Linear.
DEFINE_THE_CLASS_PRINTOUT = TUTORIAL_PRINTOUT.replace(
    "    (4): Linear(in_features=512, out_features=10, bias=True)\n",
    "    (4): Linear(in_features=512, out_features=10, bias=True)\n    (5): ReLU()\n",
)


@pytest.fixture(scope="module")
def nets():
    """A default-spec net per twin, seed 0, built once for the module."""
    return {name: get_backend(name).init(seed=0) for name in BACKEND_NAMES}


@pytest.fixture(scope="module")
def same_nets(nets):
    """Every twin holding the torch net's very weights, converted through the canonical state_dict."""
    torch_state = get_backend("torch").to_state_dict(nets["torch"])
    return {
        name: nets["torch"] if name == "torch" else get_backend(name).from_state_dict(torch_state)
        for name in BACKEND_NAMES
    }


def as_numpy(out) -> np.ndarray:
    """A twin's forward output as numpy: a torch tensor (on any device) or a JAX array."""
    return np.asarray(out.cpu()) if hasattr(out, "cpu") else np.asarray(out)


@pytest.fixture
def net(backend, nets):
    """The default-spec net of the twin under test."""
    return nets[backend.name]


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("n", [1, 3, 64])
def test_logits_are_n_by_10_for_both_image_layouts(backend, net, n):
    flat = backend.logits(net, image_batch(n, layout="N,28,28"))
    channel = backend.logits(net, image_batch(n, layout="N,1,28,28"))
    assert flat.shape == (n, 10) and flat.dtype == np.float32
    assert np.isfinite(flat).all()
    # (N, 1, 28, 28) flattens to the same 784 numbers as (N, 28, 28), so the logits are identical.
    np.testing.assert_array_equal(channel, flat)


@pytest.mark.parametrize("n", [1, 3, 64])
def test_layer_outputs_have_the_tutorial_shapes(backend, net, n):
    outputs = backend.layer_outputs(net, image_batch(n, layout="N,1,28,28"))
    expected = {"flatten": (n, 784), "0": (n, 512), "1": (n, 512), "2": (n, 512), "3": (n, 512), "4": (n, 10)}
    assert {k: v.shape for k, v in outputs.items()} == expected
    # The last entry of the stack is what the model returns.
    np.testing.assert_array_equal(outputs["4"], backend.logits(net, image_batch(n, layout="N,1,28,28")))
    # Odd entries are ReLUs: non-negative, and exactly max(previous, 0).
    np.testing.assert_array_equal(outputs["1"], np.maximum(outputs["0"], 0))
    np.testing.assert_array_equal(outputs["3"], np.maximum(outputs["2"], 0))


# ----------------------------------------------------------------------------- parameters


def test_parameter_count_is_the_tutorials_669706(backend, net):
    assert backend.count_parameters(net) == EXPECTED_PARAMETERS == 669_706
    assert EXPECTED_PARAMETERS == TUTORIAL_PARAMETER_COUNT == DEFAULT_SPEC.num_parameters()


def test_summary_table_totals_the_parameter_count(backend, net):
    last_line = backend.summary(net).splitlines()[-1]
    assert last_line.split() == ["total", "669,706"]


def test_state_dict_has_the_tutorials_keys_and_torch_shapes(backend, net):
    state = backend.to_state_dict(net)
    assert list(state) == [
        "linear_relu_stack.0.weight",
        "linear_relu_stack.0.bias",
        "linear_relu_stack.2.weight",
        "linear_relu_stack.2.bias",
        "linear_relu_stack.4.weight",
        "linear_relu_stack.4.bias",
    ]
    assert list(state) == list(checkpoint_keys())
    assert {k: v.shape for k, v in state.items()} == {
        "linear_relu_stack.0.weight": (512, 784),
        "linear_relu_stack.0.bias": (512,),
        "linear_relu_stack.2.weight": (512, 512),
        "linear_relu_stack.2.bias": (512,),
        "linear_relu_stack.4.weight": (10, 512),
        "linear_relu_stack.4.bias": (10,),
    }
    assert all(v.dtype == np.float32 for v in state.values())


def test_flax_param_paths_are_torch_parameter_names_mapped_with_kernels_transposed(torch_backend, flax_backend):
    torch_params = torch_backend.native_parameters(torch_backend.init(seed=0))
    flax_params = flax_backend.native_parameters(flax_backend.init(seed=0))
    mapped = {}
    for name, shape in torch_params.items():
        path = flax_param_path(name)
        mapped[path] = (
            shape[::-1] if path[-1] == "kernel" else shape
        )  # Linear weight [out, in] -> Dense kernel [in, out]
    assert mapped == flax_params
    assert flax_params[("linear_relu_stack", "layers_0", "kernel")] == (784, 512)
    assert len(torch_params) == len(flax_params) == 6


def test_nnx_state_paths_are_torch_parameter_names_mapped_with_kernels_transposed(torch_backend):
    nnx_backend = get_backend("nnx")
    torch_params = torch_backend.native_parameters(torch_backend.init(seed=0))
    nnx_params = nnx_backend.native_parameters(nnx_backend.init(seed=0))
    mapped = {
        nnx_param_path(name): shape[::-1] if name.endswith(".weight") else shape for name, shape in torch_params.items()
    }
    assert mapped == nnx_params
    # nnx.Sequential keeps its entries in the list `layers`: the torch index is an integer path entry
    assert nnx_params[("linear_relu_stack", "layers", 0, "kernel")] == (784, 512)
    assert sorted(".".join(map(str, path)) for path in nnx_params) == [
        f"linear_relu_stack.layers.{i}.{kind}" for i in (0, 2, 4) for kind in ("bias", "kernel")
    ]


# The NNX twin's print: the torch print's structure, with NNX's state paths and layer names.
NNX_PRINTOUT = """\
NeuralNetwork(
  (flatten): reshape(N, -1)
  (linear_relu_stack): Sequential(
    (layers.0): Linear(in_features=784, out_features=512, bias=True)
    (layers.1): ReLU()
    (layers.2): Linear(in_features=512, out_features=512, bias=True)
    (layers.3): ReLU()
    (layers.4): Linear(in_features=512, out_features=10, bias=True)
  )
)"""


@pytest.mark.parametrize("output_activation", [None, "relu"], ids=["tutorial", "define-the-class"])
def test_nnx_summary_prints_the_tutorial_structure_under_its_state_paths(output_activation):
    nnx_backend = get_backend("nnx")
    text = nnx_backend.summary(nnx_backend.init(seed=0, spec=ModelSpec(output_activation=output_activation)))
    want = (
        NNX_PRINTOUT
        if output_activation is None
        else NNX_PRINTOUT.replace(
            "out_features=10, bias=True)\n", "out_features=10, bias=True)\n    (layers.5): ReLU()\n"
        )
    )
    assert text.startswith(want + "\n")
    assert "linear_relu_stack.layers.2   Linear     (1, 512)         262,656" in text.splitlines()


# ----------------------------------------------------------------------------- the tutorial's printout (torch only)


def test_torch_model_prints_exactly_as_the_tutorial(torch_backend):
    assert str(torch_backend.init(seed=0)) == TUTORIAL_PRINTOUT


def test_torch_model_with_output_relu_prints_the_define_the_class_cell(torch_backend):
    model = torch_backend.init(seed=0, spec=ModelSpec(output_activation="relu"))
    assert str(model) == DEFINE_THE_CLASS_PRINTOUT
    assert "    (5): ReLU()\n" in str(model)
    # The trailing ReLU has no parameters, so the state_dict keys stay the tutorial's.
    assert list(model.state_dict()) == list(checkpoint_keys())


# ----------------------------------------------------------------------------- initialization


def test_same_seed_gives_the_same_weights_and_another_seed_different_ones(backend):
    first = backend.to_state_dict(backend.init(seed=0))
    again = backend.to_state_dict(backend.init(seed=0))  # built afresh
    other = backend.to_state_dict(backend.init(seed=1))
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
        assert not np.array_equal(first[key], other[key]), key


def test_default_init_is_torchs_uniform_within_one_over_sqrt_fan_in(backend, net):
    """Every weight and bias ~ U(-b, b) with b = 1/sqrt(fan_in), torch.nn.Linear's default.

    Tolerances, for n samples of U(-b, b): the sigma is b/sqrt(3), so the standard error of the
    mean is (b/sqrt(3))/sqrt(n). The fourth central moment is b^4/5, so Var(s^2) ~ (b^4/5 - b^4/9)/n
    = 4 b^4/(45 n) and, by the delta method, the standard error of s is SE(s^2)/(2 sigma) = b/sqrt(15 n).
    Five standard errors make a false failure a ~1e-6 event per check (the seed is fixed anyway).
    """
    for key, value in backend.to_state_dict(net).items():
        fan_in = net_fan_in(key)
        b = 1.0 / math.sqrt(fan_in)
        n = value.size
        v = value.astype(np.float64)
        assert np.abs(v).max() <= b * (1 + 1e-6), key  # 1e-6: b is rounded to float32 before sampling
        assert abs(v.mean()) <= 5 * (b / math.sqrt(3)) / math.sqrt(n), key
        assert abs(v.std() - b / math.sqrt(3)) <= 5 * b / math.sqrt(15 * n), key


def net_fan_in(key: str) -> int:
    """fan_in of the Linear that canonical key `key` belongs to: 784 for layer 0, else 512."""
    index = int(key.split(".")[1])
    return dict(zip(DEFAULT_SPEC.linear_indices, DEFAULT_SPEC.layer_sizes, strict=True))[index][0]


@pytest.mark.parametrize("twin", ["flax", "nnx"])
def test_flax_init_scheme_flax_gives_zero_biases_and_lecun_normal_kernels(twin):
    state = get_backend(twin).to_state_dict(get_backend(twin).init(seed=0, init_scheme="flax"))
    for key, value in state.items():
        if key.endswith(".bias"):
            np.testing.assert_array_equal(value, np.zeros_like(value))
        else:
            # lecun_normal: a truncated normal rescaled to std 1/sqrt(fan_in). SE(s) <= sigma/sqrt(2n)
            # (the normal's; truncation only lowers the kurtosis), and we allow five of them.
            sigma = 1.0 / math.sqrt(net_fan_in(key))
            assert abs(value.std() - sigma) <= 5 * sigma / math.sqrt(2 * value.size), key


# ----------------------------------------------------------------------------- bad input

BAD_INPUTS = [
    ("27x27 images", np.zeros((2, 27, 27), np.float32), InputShapeError, "got (2, 27, 27)"),
    ("no batch dim", np.zeros((28, 28), np.float32), InputShapeError, "add a batch dimension"),
    ("two channels", np.zeros((2, 2, 28, 28), np.float32), InputShapeError, "got (2, 2, 28, 28)"),
    ("flat 784", np.zeros((2, 784), np.float32), InputShapeError, "got (2, 784)"),
    ("uint8 pixels", np.zeros((2, 28, 28), np.uint8), InputDtypeError, "got uint8"),
    ("int32 pixels", np.zeros((2, 1, 28, 28), np.int32), InputDtypeError, "got int32"),
    ("int64 pixels", np.zeros((2, 28, 28), np.int64), InputDtypeError, "got int64"),
    ("bool mask", np.zeros((2, 28, 28), bool), InputDtypeError, "got bool"),
]


@pytest.mark.parametrize("case, x, error, phrase", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_twins_refuse_bad_input_with_the_same_error_and_message(nets, case, x, error, phrase):
    raised = {}
    for name in BACKEND_NAMES:
        with pytest.raises(error) as info:
            get_backend(name).forward(nets[name], x)
        raised[name] = (type(info.value), str(info.value))
    assert raised["torch"] == raised["flax"] == raised["nnx"]
    assert phrase in raised["torch"][1]


def test_twins_cast_float64_and_float16_inputs_to_float32_alike(same_nets):
    """Each twin casts float64/float16 to float32 (the same logits as the float32 input), and the twins,
    holding the same weights, agree with each other on every dtype (test_parity.py's 1e-6)."""
    x32 = np.random.default_rng(0).random((3, 28, 28), dtype=np.float32)
    outs = {}
    for name in BACKEND_NAMES:
        backend, net = get_backend(name), same_nets[name]
        outs[name] = {
            dtype: as_numpy(backend.forward(net, x32.astype(dtype))) for dtype in (np.float32, np.float64, np.float16)
        }
        want = outs[name][np.float32]
        assert all(out.dtype == np.float32 for out in outs[name].values())
        np.testing.assert_array_equal(outs[name][np.float64], want)  # exact: float32 values survive the round trip
        assert np.abs(outs[name][np.float16] - want).max() < 1e-2  # only the float16 rounding of the pixels differs
    for name in ("flax", "nnx"):
        for dtype in (np.float32, np.float64, np.float16):
            assert np.abs(outs["torch"][dtype] - outs[name][dtype]).max() <= 1e-6, (name, dtype)


def test_twins_give_0_by_10_logits_for_an_empty_batch(nets):
    empty = np.zeros((0, 28, 28), np.float32)
    for name in BACKEND_NAMES:
        out = as_numpy(get_backend(name).forward(nets[name], empty))
        assert out.shape == (0, 10) and out.dtype == np.float32, name


# ----------------------------------------------------------------------------- import isolation

IMPORT_CHECKS = {
    "fashion_torch": "import fashion_torch, sys; assert 'jax' not in sys.modules and 'flax' not in sys.modules",
    "fashion_flax": "import fashion_flax, sys; assert 'torch' not in sys.modules",
    "fashion_nnx": "import fashion_nnx, sys; assert 'torch' not in sys.modules",
}


@pytest.mark.parametrize("package", sorted(IMPORT_CHECKS))
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_importing_a_twin_does_not_import_the_other_framework(package):
    result = subprocess.run([sys.executable, "-c", IMPORT_CHECKS[package]], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


# nnx: its constructor takes the rngs it draws from, so the next test builds it with only those
@pytest.mark.parametrize("backend_name", ["torch", "flax"])
def test_the_neural_network_class_built_with_no_arguments_is_the_tutorials_stack_ending_in_logits(backend_name):
    """The constructor's own defaults, not only create_model's: no output ReLU, the tutorial's spec."""
    import importlib

    pkg = importlib.import_module(f"fashion_{backend_name}")
    model = pkg.NeuralNetwork()
    assert model.spec == DEFAULT_SPEC and DEFAULT_SPEC.output_activation is None
    x = np.random.default_rng(0).random((16, 28, 28), dtype=np.float32)
    if backend_name == "torch":
        import torch

        logits = model(torch.from_numpy(x)).detach().numpy()
        last = list(model.linear_relu_stack)[-1]
        assert type(last).__name__ == "Linear" and last.out_features == 10
    else:
        import jax

        variables = model.init(jax.random.PRNGKey(0), x)
        logits = np.asarray(model.apply(variables, x))
        assert len(model.bind(variables).linear_relu_stack.layers) == DEFAULT_SPEC.stack_length == 5
    assert logits.shape == (16, 10)
    assert (logits < 0).any()  # logits, not ReLU outputs: a trailing ReLU would leave none below zero


def test_the_nnx_neural_network_built_with_only_its_rngs_is_the_tutorials_stack_ending_in_logits():
    """The NNX constructor's own defaults (it needs nnx.Rngs, as every NNX layer does): no output ReLU."""
    from flax import nnx

    import fashion_nnx

    model = fashion_nnx.NeuralNetwork(rngs=nnx.Rngs(0))
    assert model.spec == DEFAULT_SPEC and len(model.linear_relu_stack.layers) == DEFAULT_SPEC.stack_length == 5
    last = model.linear_relu_stack.layers[-1]
    assert isinstance(last, nnx.Linear) and last.out_features == 10
    logits = np.asarray(model(np.random.default_rng(0).random((16, 28, 28), dtype=np.float32)))
    assert logits.shape == (16, 10) and (logits < 0).any()  # logits, not ReLU outputs
