"""Property-based tests: hypothesis draws shapes, dtypes and values, and all three twins must give the same
result (within a stated tolerance, NaN in the same places) or the same exception class and message.

Values include +-0, +-inf, NaN, subnormals, huge magnitudes and empty batches. The default profile
draws few examples (fast); `--hypothesis-profile=deep` or FASHION_TWINS_HYPOTHESIS=deep draws many
(profiles in tests/conftest.py).

The one deliberate difference, pinned in test_activations.py: XLA on CPU flushes float32 subnormal
inputs to zero, torch does not. So flax(x) and nnx(x) are compared with torch(flush(x)); nothing in this
network comes near 1e-38, so the rule costs no real input anything.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.numpy
import torch
from backends import BACKEND_NAMES, get_backend
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fashion_flax
import fashion_nnx
import fashion_torch
from fashion_common import checkpoint as canonical
from fashion_common.errors import CheckpointError, FashionTwinsError
from fashion_common.spec import DEFAULT_SPEC

ELEMENTWISE = ("binary_step", "sigmoid", "tanh", "relu")
TWINS = {"torch": fashion_torch, "flax": fashion_flax, "nnx": fashion_nnx}
JAX_TWINS = ("flax", "nnx")

# Same argument as tests/test_activations.py: each library is within 4 ulps of the truth, so the
# twins are within 8 ulps of each other, in the input dtype's own ulps (float16 values are computed
# in float32 and rounded by both, so 8 of its much larger ulps is loose there, never tight).
ULPS = 8

SPECIALS = [
    0.0,
    -0.0,
    np.inf,
    -np.inf,
    np.nan,
    1e-45,
    -1e-45,
    1e-39,
    -1e-39,
    1e-7,
    -1e-7,
    3.4e38,
    -3.4e38,
    1e4,
    -1e4,
    88.7,
    -88.7,
    -103.0,
]
FLOAT_DTYPES = [np.float16, np.float32]
NON_FLOAT_DTYPES = [np.int8, np.uint8, np.int32, np.int64, np.bool_]


def values(dtype):
    """Elements of `dtype`: the specials (cast, so 3.4e38 becomes inf in float16) and anything hypothesis draws."""
    width = np.dtype(dtype).itemsize * 8
    with np.errstate(over="ignore"):
        specials = sorted({float(np.asarray(v, dtype)) for v in SPECIALS if not np.isnan(v)}) + [float("nan")]
    return st.one_of(
        st.sampled_from(specials), st.floats(width=width, allow_nan=True, allow_infinity=True, allow_subnormal=True)
    )


def arrays(dtype, min_dims=0, max_dims=3, max_side=5, min_side=0):
    return hnp.arrays(
        dtype,
        hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side),
        elements=values(dtype),
    )


def flush(x: np.ndarray) -> np.ndarray:
    """What XLA's CPU kernels do to a float32 input: subnormals become zeros of the same sign."""
    if x.dtype != np.float32:
        return x
    tiny = np.finfo(np.float32).tiny
    return np.where(np.abs(x) < tiny, np.copysign(np.float32(0), x), x).astype(np.float32)


def outcome(fn):
    """("ok", numpy result) or ("error", (exception class, message)); the thing both twins must share."""
    try:
        out = fn()
    except Exception as e:  # any error: its class and message are what is compared
        return "error", (type(e), str(e))
    out = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
    return "ok", out


def assert_close_in_ulps(got, want, dtype, ulps=ULPS):
    """Same NaN places and infinities; elsewhere |got - want| <= ulps * ulp(want) + the dtype's smallest normal."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[np.isinf(want)], want[np.isinf(want)])
    finite = np.isfinite(want)
    spacing = np.spacing(np.abs(want[finite]).astype(dtype)).astype(np.float64)
    bound = ulps * spacing + float(np.finfo(dtype).tiny)
    error = np.abs(got[finite] - want[finite])
    assert (error <= bound).all(), f"max excess {np.max(error - bound):.3g}"


def call(twin: str, name: str, x: np.ndarray, **kwargs):
    """The twin's own function on its own array type; flax gets the NumPy array as given (JAX would
    narrow int64 to int32 before the twin could name the dtype the caller gave)."""
    arg = torch.from_numpy(np.array(x)) if twin == "torch" else x
    return outcome(lambda: getattr(TWINS[twin], name)(arg, **kwargs))


# ----------------------------------------------------------------------------- activations


@pytest.mark.parametrize("name", ELEMENTWISE)
@given(data=st.data())
def test_elementwise_activations_agree_or_fail_alike_for_any_dtype_shape_and_value(name, data):
    dtype = data.draw(st.sampled_from(FLOAT_DTYPES + NON_FLOAT_DTYPES), label="dtype")
    if dtype in FLOAT_DTYPES:
        x = data.draw(arrays(dtype), label="x")
    else:
        x = data.draw(hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)), label="x")
    torch_kind, torch_out = call("torch", name, flush(x))
    for twin in JAX_TWINS:
        flax_kind, flax_out = call(twin, name, x)
        assert torch_kind == flax_kind, (twin, torch_out, flax_out)
        if torch_kind == "error":
            assert torch_out == flax_out
            assert issubclass(torch_out[0], FashionTwinsError)  # only the shared rule's error, never a library's own
            continue
        assert torch_out.dtype == flax_out.dtype == dtype  # a floating input keeps its dtype in every twin
        assert_close_in_ulps(flax_out, torch_out, dtype)


@given(data=st.data())
def test_softmax_agrees_over_any_valid_dim_and_fails_alike_for_any_other(data):
    dtype = data.draw(st.sampled_from(FLOAT_DTYPES), label="dtype")
    x = data.draw(arrays(dtype, max_dims=3), label="x")
    size = max(x.ndim, 1)
    dim = data.draw(
        st.one_of(
            st.integers(-size, size - 1),  # valid
            st.integers(-10, 10),  # mostly out of range
            st.sampled_from([None, True, False, 1.0, "0", -0.5]),
            st.integers(-size, size - 1).map(np.int64),
        ),
        label="dim",
    )
    torch_kind, torch_out = call("torch", "softmax", flush(x), dim=dim)
    for twin in JAX_TWINS:
        flax_kind, flax_out = call(twin, "softmax", x, dim=dim)
        assert torch_kind == flax_kind, (twin, torch_out, flax_out)
        if torch_kind == "error":
            assert torch_out == flax_out
            assert issubclass(torch_out[0], FashionTwinsError)
            continue
        # Outputs lie in [0, 1]: 1e-6 absolute in float32 (ulp at 1 is 1.2e-7; exp, the max shift and the
        # sum add a few), 4e-3 in float16 (4 of its ulps at 1, 9.8e-4 each).
        tol = 1e-6 if dtype == np.float32 else 4e-3
        t, f = torch_out.astype(np.float64), flax_out.astype(np.float64)
        np.testing.assert_array_equal(np.isnan(t), np.isnan(f))
        finite = ~np.isnan(t)
        assert (np.abs(t[finite] - f[finite]) <= tol).all()


# ----------------------------------------------------------------------------- the model's forward


@pytest.fixture(scope="module")
def same_nets():
    """The torch net, and a net of each JAX twin holding the very same weights."""
    torch_backend = get_backend("torch")
    net = torch_backend.init(seed=0)
    state = torch_backend.to_state_dict(net)
    return {"torch": net, **{twin: get_backend(twin).from_state_dict(state) for twin in JAX_TWINS}}


def _forward(twin, nets, x):
    net = nets[twin]
    if twin == "torch":
        with torch.no_grad():
            return outcome(lambda: net(x))  # a NumPy array straight in: the shared input rule
    if twin == "nnx":
        return outcome(lambda: net(x))  # the nnx.Module holds its weights, as torch's does
    return outcome(lambda: net.model.apply(net.params, x))


@given(data=st.data())
def test_model_forward_agrees_or_fails_alike_for_any_batch_dtype_and_values(same_nets, data):
    dtype = data.draw(
        st.sampled_from([np.float32, np.float64, np.float16, np.uint8, np.int64, np.bool_]), label="dtype"
    )
    shape = data.draw(
        st.one_of(
            st.tuples(st.integers(0, 3), st.just(28), st.just(28)),
            st.tuples(st.integers(0, 3), st.just(1), st.just(28), st.just(28)),
            hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=29),  # mostly wrong shapes
        ),
        label="shape",
    )
    assume(int(np.prod(shape)) <= 4 * 784)
    # Huge but bounded magnitudes plus the specials: |x| <= 1e30 keeps every sum of products far from
    # float32's 3.4e38, so overflow cannot depend on a library's summation order.
    big = float(np.float32(1e30))
    fill = st.one_of(
        st.sampled_from([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-39, big, -big]), st.floats(-big, big, width=32)
    )
    if np.issubdtype(dtype, np.floating):
        x = data.draw(
            hnp.arrays(
                dtype,
                shape,
                elements=fill.map(lambda v: float(np.asarray(v, dtype)))
                if dtype != np.float16
                else st.floats(width=16),
            ),
            label="x",
        )
    else:
        x = data.draw(hnp.arrays(dtype, shape), label="x")
    torch_kind, torch_out = _forward("torch", same_nets, flush(x.astype(np.float32)) if dtype == np.float32 else x)
    for twin in JAX_TWINS:
        flax_kind, flax_out = _forward(twin, same_nets, x)
        assert torch_kind == flax_kind, (twin, torch_out, flax_out)
        if torch_kind == "error":
            assert torch_out == flax_out
            assert issubclass(torch_out[0], FashionTwinsError)
            continue
        assert torch_out.shape == flax_out.shape == (shape[0], 10)
        np.testing.assert_array_equal(np.isnan(torch_out), np.isnan(flax_out))
        np.testing.assert_array_equal(np.isinf(torch_out), np.isinf(flax_out))
        # Finite logits: float32 matmuls in two libraries sum in different orders; the error of a sum of
        # products is relative to the size of its terms, which scale with the largest input, so the
        # bound is 1e-5 * max(1, max |x|) (test_parity.py's 1e-6 is for inputs in [0, 1]).
        finite = np.isfinite(torch_out)
        xs = np.abs(x[np.isfinite(x)].astype(np.float64))
        scale = max(1.0, float(xs.max()) if xs.size else 1.0)
        assert (np.abs(torch_out[finite] - flax_out[finite]) <= 1e-5 * scale).all()


# ----------------------------------------------------------------------------- checkpoint headers

HEADER_FIELDS = ("format", "image_size", "hidden_sizes", "num_classes", "activation", "output_activation", "step")

# Plausible near-misses for each field, then anything at all.
NEAR_MISSES = st.sampled_from(
    [
        "",
        " ",
        "28",
        "28,28",
        "28,28,1",
        "0,28",
        "-28,28",
        "512,512",
        "512",
        "512,",
        ",512",
        "512;512",
        "1e3",
        "10.0",
        "+10",
        " 10",
        "10 ",
        "0",
        "-1",
        "9" * 30,
        "relu",
        "ReLU",
        "gelu",
        "none",
        "None",
        "null",
        "fashion-twins/canonical-v1",
        "fashion-twins/canonical-v2",
        "fashion-twins/canonical-v1/train-state",
        "pt",
        "np",
        "\x00",
        "٣",
        "１０",
    ]
)


def _good_state():
    return get_backend("torch").to_state_dict(get_backend("torch").init(seed=0))


@given(
    changes=st.dictionaries(
        st.sampled_from(HEADER_FIELDS), st.one_of(st.none(), NEAR_MISSES, st.text(max_size=40)), min_size=1, max_size=4
    )
)
def test_any_header_field_value_reads_fine_or_gives_checkpoint_error_in_both_twins(tmp_path_factory, changes):
    metadata = {"format": canonical.FORMAT_NAME, **DEFAULT_SPEC.to_metadata(), "step": "3"}
    for field, value in changes.items():
        if value is None:
            metadata.pop(field, None)  # the field left out
        else:
            metadata[field] = value
    path = tmp_path_factory.mktemp("hdr") / "m.safetensors"
    safetensors.numpy.save_file(_good_state(), str(path), metadata=metadata)
    results = {}
    for name in BACKEND_NAMES:
        try:
            net = get_backend(name).load(path)
            results[name] = ("ok", get_backend(name).spec_of(net))
        except CheckpointError as e:
            results[name] = ("error", str(e))
        # any other exception fails the test here, with its traceback
    assert results["torch"] == results["flax"] == results["nnx"]
    kind, detail = results["torch"]
    if kind == "ok":
        # accepted: every spec field present is the default's own spelling (the tensors fix the shapes)
        assert detail == DEFAULT_SPEC
    else:
        assert str(path) in detail and "\n" not in detail


COUNTER_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=10),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@given(
    changes=st.dictionaries(
        st.sampled_from(["backend", "epoch", "step", "optimizer_step", "config", "history", "extra"]),
        st.one_of(st.just("<drop>"), COUNTER_VALUES),
        min_size=1,
        max_size=3,
    ),
    raw=st.one_of(st.none(), st.text(max_size=30)),
)
def test_any_sidecar_counters_read_fine_or_give_checkpoint_error(tmp_path_factory, changes, raw):
    counters = {
        "backend": "torch",
        "epoch": 1,
        "step": 10,
        "optimizer_step": 10,
        "config": {},
        "history": [{"epoch": 1}],
    }
    for key, value in changes.items():
        if value == "<drop>":
            counters.pop(key, None)
        else:
            counters[key] = value
    path = tmp_path_factory.mktemp("side") / "m.safetensors"
    text = raw if raw is not None else json.dumps(counters)
    side = canonical.train_state_path(path)
    safetensors.numpy.save_file(
        {"momentum/x": np.zeros(2, np.float32)},
        str(side),
        metadata={"format": canonical.FORMAT_NAME + "/train-state", "counters": text},
    )
    try:
        _, got = canonical.read_train_state(path)
    except CheckpointError as e:
        assert str(side) in str(e)
        return
    # accepted: then every field the loop and the train modules use has its type and range
    assert got["backend"] in ("torch", "flax", "nnx")
    for key in ("epoch", "step", "optimizer_step"):
        assert type(got[key]) is int and got[key] >= 0
    assert isinstance(got["config"], dict) and len(got["history"]) == got["epoch"]


# ----------------------------------------------------------------------------- any library, any dtype

# The library the batch comes from, and its dtype (the low-precision floats where the library has them).
INPUT_LIBRARIES = ("numpy", "torch", "jax", "list")
INPUT_DTYPES = ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float64", "int32", "uint8", "bool")


def _float32(out):
    return out.float() if isinstance(out, torch.Tensor) else np.asarray(out, np.float32)


def _np_dtype(dtype: str):
    import ml_dtypes

    return getattr(ml_dtypes, dtype) if dtype.startswith(("bfloat", "float8")) else np.dtype(dtype)


def _batch_from(library: str, x: np.ndarray, dtype: str):
    """float32 values -> the same batch as `library` holds it in `dtype` (None: the library lacks it)."""
    import jax.numpy as jnp

    np_dtype = _np_dtype(dtype)
    if library == "torch":
        kind = getattr(torch, dtype, None)
        return None if kind is None else torch.from_numpy(x).to(kind)
    if library == "jax":
        return jnp.asarray(x.astype(np_dtype))  # float64 becomes float32 with x64 off: both twins see that array
    if library == "list":
        return x.astype(np_dtype).tolist() if dtype in ("float32", "float64", "int32", "bool") else None
    return x.astype(np_dtype)


@given(data=st.data())
def test_model_forward_agrees_or_fails_alike_for_a_batch_from_any_library_in_any_dtype(same_nets, data):
    library = data.draw(st.sampled_from(INPUT_LIBRARIES), label="library")
    dtype = data.draw(st.sampled_from(INPUT_DTYPES), label="dtype")
    n = data.draw(st.integers(0, 2), label="n")
    x = data.draw(hnp.arrays(np.float32, (n, 28, 28), elements=st.floats(0, 1, width=32)), label="x")
    batch = _batch_from(library, x, dtype)
    assume(batch is not None)
    torch_kind, torch_out = _forward("torch", same_nets, batch)
    flax_kind, flax_out = _forward("flax", same_nets, batch)
    assert (torch_kind, library, dtype) == (flax_kind, library, dtype), (torch_out, flax_out)
    floating = dtype.startswith(("float", "bfloat"))
    # every floating batch is accepted (an empty list alone has lost its (0, 28, 28) shape)
    assert torch_kind == "ok" or not floating or (library == "list" and n == 0), torch_out
    if torch_kind == "error":
        assert torch_out == flax_out  # the same class and message, naming the caller's dtype
        assert issubclass(torch_out[0], FashionTwinsError)
        return
    assert torch_out.shape == flax_out.shape == (n, 10)
    # Both twins cast the same values to float32 exactly (every bfloat16/float16/float8 value is a
    # float32), so this is test_parity's float32 bound for inputs in [0, 1].
    assert float(np.abs(torch_out - flax_out).max(initial=0.0)) <= 1e-5


@given(data=st.data())
def test_every_activation_agrees_or_fails_alike_on_any_library_and_dtype(data):
    name = data.draw(st.sampled_from(ELEMENTWISE + ("softmax",)), label="activation")
    library = data.draw(st.sampled_from(INPUT_LIBRARIES), label="library")
    dtype = data.draw(st.sampled_from(INPUT_DTYPES), label="dtype")
    x = data.draw(hnp.arrays(np.float32, st.integers(1, 6), elements=st.floats(-8, 8, width=32)), label="x")
    batch = _batch_from(library, x, dtype)
    assume(batch is not None)
    outs = {}
    for twin_name, twin in TWINS.items():  # torch's bfloat16/float8 results reach numpy through float32
        kind, out = outcome(lambda twin=twin: _float32(getattr(twin, name)(batch)))
        outs[twin_name] = (kind, out)
    torch_kind, torch_out = outs["torch"]
    for other in ("flax", "nnx"):
        other_kind, other_out = outs[other]
        assert (torch_kind, name, library, dtype) == (other_kind, name, library, dtype), (other, torch_out, other_out)
    if torch_kind == "error":
        assert all(outs[other][1] == torch_out for other in ("flax", "nnx"))
        assert issubclass(torch_out[0], FashionTwinsError)
        return
    # Each library rounds the result to the input's dtype (float8: 3 mantissa bits, bfloat16: 8, ...):
    # 2 of that dtype's ulps at 1 bound the difference of two correctly rounded values in [0, 8].
    # Never finer than float32's: the results are compared in float32 (_float32), and JAX without
    # x64 computes a float64 batch in float32 while torch computes it in float64 (tanh(3.0) differs
    # by one float32 ulp), so a float64 batch is held to float32's bound.
    import ml_dtypes

    dtype_eps = float(ml_dtypes.finfo(np.float32 if library == "list" else _np_dtype(dtype)).eps)
    eps = max(dtype_eps, float(np.finfo(np.float32).eps))
    t = np.asarray(torch_out, np.float64)
    for other in ("flax", "nnx"):
        f = np.asarray(outs[other][1], np.float64)
        assert t.shape == f.shape == x.shape
        assert float(np.abs(t - f).max()) <= 2 * eps * 8, other


def test_tanh_of_a_float64_numpy_batch_agrees_within_float32_rounding():
    """Found by CI's random draw: JAX (x64 off) computes this batch in float32, torch in float64."""
    x = np.array([3.0], np.float64)
    outs = [np.asarray(_float32(twin.tanh(x)), np.float64) for twin in TWINS.values()]
    assert all(abs(o[0] - np.tanh(3.0)) <= np.finfo(np.float32).eps for o in outs), outs
