"""The twins fail alike, pinned by example: empty batches, NumPy and list inputs, bad inputs, softmax dims,
activation dtypes, NaN/Inf/huge inputs and seeds give the same result or the same error in every twin.

tests/test_properties.py draws the unknown edges; these are the known ones."""

from __future__ import annotations

import numpy as np
import pytest
from backends import BACKEND_NAMES, get_backend, image_batch

from fashion_common.errors import DimError, InputDtypeError


def _good_state():
    return get_backend("torch").to_state_dict(get_backend("torch").init(seed=0))


# ----------------------------------------------------------------------------- the twins fail alike: examples


def _outcome(fn):
    """(result as float64 numpy, None) or (None, (exception class, message))."""
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001  # the class and message are what is compared
        return None, (type(e), str(e))
    out = out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)
    return out, None


@pytest.fixture(scope="module")
def nets():
    return {name: get_backend(name).init(seed=0) for name in BACKEND_NAMES}


@pytest.mark.parametrize("layout", ["N,28,28", "N,1,28,28"])
def test_an_empty_batch_gives_0_by_10_logits_in_both_twins(nets, layout):
    x = image_batch(0, layout=layout)
    for name in BACKEND_NAMES:
        out = get_backend(name).forward(nets[name], x)
        assert tuple(out.shape) == (0, 10), name


def test_both_twins_accept_a_numpy_batch_and_a_nested_list_alike(nets):
    import torch

    x = image_batch(2)
    torch_net = nets["torch"]
    flax_net = get_backend("flax").from_state_dict(get_backend("torch").to_state_dict(torch_net))  # the same weights
    want = get_backend("torch").logits(torch_net, x)
    with torch.no_grad():
        from_numpy = torch_net(x).numpy()  # a NumPy array straight into the torch model
        from_list = torch_net(x.tolist()).numpy()
    flax_numpy = np.asarray(flax_net.model.apply(flax_net.params, x))
    flax_list = np.asarray(flax_net.model.apply(flax_net.params, x.tolist()))
    flax_torch = np.asarray(flax_net.model.apply(flax_net.params, torch.from_numpy(x)))  # a CPU torch tensor into flax
    nnx_net = get_backend("nnx").from_state_dict(get_backend("torch").to_state_dict(torch_net))
    nnx_outs = [np.asarray(nnx_net(x)), np.asarray(nnx_net(x.tolist())), np.asarray(nnx_net(torch.from_numpy(x)))]
    np.testing.assert_array_equal(from_numpy, want)
    np.testing.assert_array_equal(from_list, want)  # float64 list -> float32: the same values
    # cross-twin: float32 matmuls in two libraries, summation order differs (test_parity.py's 1e-6)
    for got in (flax_numpy, flax_list, flax_torch, *nnx_outs):
        assert np.abs(got - want).max() <= 1e-6


@pytest.mark.parametrize(
    "x, phrase",
    [
        ([[1, 2]], "got (1, 2)"),
        (np.zeros((2, 28, 28), np.int64).tolist(), "got int64"),
        (np.zeros((1, 28, 28), np.uint8), "got uint8"),
    ],
    ids=["short list", "int list", "uint8 numpy"],
)
def test_both_twins_refuse_a_bad_numpy_or_list_input_with_the_same_error(nets, x, phrase):
    torch_out = _outcome(lambda: nets["torch"](x))
    flax_out = _outcome(lambda: nets["flax"].model.apply(nets["flax"].params, x))
    nnx_out = _outcome(lambda: nets["nnx"](x))
    assert torch_out[1] == flax_out[1] == nnx_out[1] and torch_out[1] is not None
    assert phrase in torch_out[1][1]


@pytest.mark.parametrize("dim", [None, True, False, 1.0, "1", 2, -3, 99])
def test_softmax_with_a_bad_dim_raises_the_same_dim_error_in_both_twins(dim):
    x = np.zeros((2, 3), np.float32)
    outcomes = {}
    for name in BACKEND_NAMES:
        with pytest.raises(DimError) as info:
            get_backend(name).activation("softmax", x, dim=dim)
        outcomes[name] = str(info.value)
        assert isinstance(
            info.value, (IndexError, TypeError)
        )  # what torch's own softmax raises, so old handlers still catch it
    assert outcomes["torch"] == outcomes["flax"] == outcomes["nnx"]


def test_softmax_accepts_numpy_integer_dims_and_treats_a_0d_input_as_one_value():
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    for name in BACKEND_NAMES:
        b = get_backend(name)
        np.testing.assert_allclose(
            b.activation("softmax", x, dim=np.int64(1)), b.activation("softmax", x, dim=1), rtol=0, atol=0
        )
        assert b.activation("softmax", np.float32(5.0), dim=0) == 1.0
        assert b.activation("softmax", np.float32(5.0), dim=-1) == 1.0


@pytest.mark.parametrize("name", ["binary_step", "sigmoid", "tanh", "relu", "softmax"])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_, np.complex64])
def test_activations_refuse_integer_bool_and_complex_inputs_alike(name, dtype):
    x = np.ones((2, 3), dtype)
    messages = {}
    for backend_name in BACKEND_NAMES:
        twin = get_backend(backend_name).module
        # Straight into the twin: a torch tensor, and for flax the NumPy array as given (jnp.asarray
        # with x64 off would make int64 an int32 before the twin could name it).
        arg = __import__("torch").from_numpy(x) if backend_name == "torch" else x
        with pytest.raises(InputDtypeError) as info:
            getattr(twin, name)(arg)
        messages[backend_name] = str(info.value)
    assert (
        messages["torch"]
        == messages["flax"]
        == messages["nnx"]
        == f"{name} expects a floating-point input, got {np.dtype(dtype)}; cast it to float32 first"
    )


def test_model_forward_on_nan_inf_and_huge_inputs_gives_the_same_pattern_in_both_twins(nets):
    x = image_batch(6, seed=1)
    x[0, 0, 0] = np.nan  # NaN spreads to every logit of its row
    x[1, 5, 5] = np.inf  # inf times weights of both signs: inf - inf = NaN downstream
    x[2, 3, 3] = -np.inf
    x[3] = np.inf  # every unit sums inf * w over weights of both signs: NaN
    x[4, 10, 10] = 1e30  # huge but finite products: logits ~1e28, finite
    state = get_backend("torch").to_state_dict(nets["torch"])
    same = {
        name: nets["torch"] if name == "torch" else get_backend(name).from_state_dict(state) for name in BACKEND_NAMES
    }
    outs = {name: get_backend(name).logits(same[name], x) for name in BACKEND_NAMES}
    assert np.isnan(outs["torch"][0]).all() and np.isnan(outs["torch"][3]).all()
    finite = np.isfinite(outs["torch"])
    assert finite[4].all() and finite[5].all()
    for twin in ("flax", "nnx"):
        np.testing.assert_array_equal(np.isnan(outs["torch"]), np.isnan(outs[twin]))
        np.testing.assert_array_equal(np.isinf(outs["torch"]), np.isinf(outs[twin]))
        # relative: row 4 is ~1e28, where 1e-6 absolute means nothing; float32 summation order gives ~1e-6 relative
        rel = np.abs(outs["torch"][finite] - outs[twin][finite]) / np.maximum(np.abs(outs["torch"][finite]), 1.0)
        assert rel.max() <= 1e-5, twin


@pytest.mark.parametrize(
    "seed, error, words",
    [
        (1.5, TypeError, "got float 1.5"),
        ("0", TypeError, "got str '0'"),
        (True, TypeError, "got bool True"),
        (-1, ValueError, "got -1"),
        (2**32, ValueError, f"got {2**32}"),
    ],
)
def test_create_model_refuses_a_bad_seed_with_the_same_error_in_both_twins(seed, error, words):
    import importlib

    raised = []
    for name in ("torch", "flax"):
        with pytest.raises(error) as e:
            importlib.import_module(f"fashion_{name}").create_model(seed=seed)
        raised.append((type(e.value), str(e.value)))
    assert raised[0] == raised[1] == (error, f"seed must be None or an int from 0 to {2**32 - 1}, {words}")


def test_create_model_takes_a_numpy_integer_seed_as_the_same_int_in_both_twins():
    import fashion_flax
    import fashion_torch

    a, b = fashion_torch.create_model(seed=np.int64(3)), fashion_torch.create_model(seed=3)
    assert all(
        np.array_equal(x.detach().numpy(), y.detach().numpy())
        for x, y in zip(a.parameters(), b.parameters(), strict=True)
    )
    (_, pa), (_, pb) = fashion_flax.create_model(seed=np.int64(3)), fashion_flax.create_model(seed=3)
    fa, fb = fashion_flax.to_state_dict(pa), fashion_flax.to_state_dict(pb)
    assert all(np.array_equal(fa[k], fb[k]) for k in fa)
