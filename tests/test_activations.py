"""The tutorial's activation tour in all three twins: exact values at the edges, twin agreement, gradients.

Each twin is checked against written-down truths and a float64 numpy oracle, not only against
the other twin (micrograd's test_engine style: the same function written twice, one the oracle).
"""

from __future__ import annotations

import numpy as np
import pytest
from backends import max_abs_diff

# The grid from the issue: zeros of both signs, +-1, +-1e4 (where naive sigmoid/softmax overflow),
# +-inf and NaN.
GRID = np.array([0.0, -0.0, 1.0, -1.0, 1e4, -1e4, np.inf, -np.inf, np.nan], np.float32)
ELEMENTWISE = ("binary_step", "sigmoid", "tanh", "relu")

# Near zero an absolute tolerance sees nothing (tanh(1e-7) = 1e-7: a tanh returning 0 there is off
# by 1e-7 < 1e-6), so the elementwise values are compared in float32 ulps of the true value:
# ULPS = 4, as the libraries' own tanh/exp are good to a few ulps (measured on DENSE below against
# the float64 oracle: torch <= 1.9 ulps, JAX's tanh <= 3.7). Two twins each within ULPS of the truth
# are within 2 * ULPS of each other. Below float32's smallest normal, XLA flushes subnormals to 0,
# so there the floor is FLOOR = finfo(float32).tiny, absolute (sigmoid(-100) is 0 in flax, 3.7e-44 in torch).
ULPS = 4
FLOOR = float(np.finfo(np.float32).tiny)
# Gradients such as 1 - tanh(x)^2 lose their relative accuracy where the value saturates (1 - y^2
# for y within an ulp of 1 is a difference of two nearly equal numbers): their error is absolute,
# a few ulps of 1, so gradients get ULPS relative plus GRAD_ATOL = 4 * eps32 = 4.8e-7 absolute
# (measured: JAX's tanh' is 3.9e-7 beyond 4 ulps of the oracle near |x| = 0.5).
GRAD_ATOL = 4 * float(np.finfo(np.float32).eps)
# Softmax and the other absolute checks: 1e-6 for values in [0, 1] (float32's ulp at 1 is 1.2e-7;
# the x - max shift and the sum add a few ulps).
TOL = 1e-6

# Log-spaced magnitudes from float32's smallest normal to saturation, both signs: where relative
# errors show. Subnormal inputs are left out here: XLA on CPU flushes them to zero and torch does
# not, a documented difference pinned by test_subnormal_inputs_are_zero_in_flax_and_kept_in_torch.
_MAGNITUDES = np.geomspace(float(np.finfo(np.float32).tiny), 120, 600)
DENSE = np.unique(np.concatenate([_MAGNITUDES, -_MAGNITUDES, [0.0, 1e-7, -1e-7]]).astype(np.float32))


def reference(name: str, x: np.ndarray) -> np.ndarray:
    """The float64 oracle for each elementwise activation (NaN in, NaN out)."""
    x = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        if name == "binary_step":
            return np.where(np.isnan(x), np.nan, (x >= 0).astype(np.float64))
        if name == "sigmoid":
            return np.where(x >= 0, 1 / (1 + np.exp(-x)), np.exp(x) / (1 + np.exp(x)))  # no overflow either side
        if name == "tanh":
            return np.tanh(x)
        if name == "relu":
            return np.where(np.isnan(x), np.nan, np.maximum(x, 0))
    raise KeyError(name)


def reference_grad(name: str, x: np.ndarray) -> np.ndarray:
    """d act / dx in float64: the conventions both twins promise (ReLU'(0) = 0, step' = 0)."""
    x = x.astype(np.float64)
    y = reference(name, x)
    return {
        "binary_step": np.zeros_like(x),
        "sigmoid": y * (1 - y),
        "tanh": 1 - y**2,
        "relu": (x > 0).astype(np.float64),
    }[name]


def reference_softmax(rows: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, max subtracted first."""
    z = rows.astype(np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def ulp32(values) -> np.ndarray:
    """float32's ulp at |value|, in float64 (the spacing of the float32 grid there)."""
    return np.spacing(np.abs(np.asarray(values, np.float64)).astype(np.float32)).astype(np.float64)


def assert_within_ulps(got, want, ulps: float = ULPS, floor: float = FLOOR, atol: float = 0.0) -> float:
    """NaN and infinities where want has them; elsewhere |got - want| <= ulps * ulp32(want) + max(floor, atol).

    Returns the largest error in ulps of the true value (printed by the callers, for the record).
    """
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"shapes differ: {got.shape} vs {want.shape}"
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[np.isinf(want)], want[np.isinf(want)])
    finite = np.isfinite(want)
    got, want = got[finite], want[finite]
    error = np.abs(got - want)
    bound = ulps * ulp32(want) + max(floor, atol)
    worst = int(np.argmax(error - bound)) if error.size else 0
    assert (error <= bound).all(), (
        f"|diff| {error[worst]:.3g} at true value {want[worst]:.9g} (got {got[worst]:.9g}) exceeds {bound[worst]:.3g}"
    )
    return float((error / ulp32(want)).max()) if error.size else 0.0


def assert_same_values(got: np.ndarray, want: np.ndarray, tol: float) -> float:
    """NaN where want has NaN, equal infinities, max |diff| <= tol elsewhere; returns that max."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[np.isinf(want)], want[np.isinf(want)])
    finite = np.isfinite(want)
    diff = max_abs_diff(got[finite], want[finite])
    assert diff <= tol, f"max |diff| {diff:.3g} > {tol:g}"
    return diff


# ----------------------------------------------------------------------------- values


def test_subnormal_inputs_are_zero_in_flax_and_kept_in_torch(torch_backend, jax_backend):
    """The one input class where the twins differ on purpose: XLA's CPU kernels flush subnormals to zero.

    Subnormals are |x| < 1.18e-38; no pixel, weight or activation of this network comes near them
    (it would need a 1e-38 product). The rule: flax treats a subnormal input as (signed) zero, torch
    computes with it; for binary_step that is 1 in flax and 0 in torch at x = -1e-39, and flax's
    relu returns -1e-39 itself there, torch's 0. If XLA ever
    stops flushing, this test says so and the exclusion from DENSE can go.
    """
    x = np.array([-1e-39, 1e-39, -1e-45], np.float32)
    assert (x != 0).all()  # really subnormal, not already zero
    np.testing.assert_array_equal(torch_backend.activation("binary_step", x), [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(jax_backend.activation("binary_step", x), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(torch_backend.activation("relu", x), [0.0, x[1], 0.0])
    # x < 0 is false for a flushed -1e-39, so flax's relu passes it on unchanged (a negative output!)
    np.testing.assert_array_equal(jax_backend.activation("relu", x), x)


# Exact truths, compared with ==: each is exactly representable and every correct float32
# implementation must hit it (sigmoid(-1e4) underflows to 0 exactly; no NaN from exp overflow).
EXACT = [
    ("binary_step", 0.0, 1.0),
    ("binary_step", -0.0, 1.0),  # -0.0 >= 0 is true
    ("binary_step", -1.0, 0.0),
    ("binary_step", np.inf, 1.0),
    ("binary_step", -np.inf, 0.0),
    ("sigmoid", 0.0, 0.5),
    ("sigmoid", -0.0, 0.5),
    ("sigmoid", 1e4, 1.0),
    ("sigmoid", -1e4, 0.0),
    ("sigmoid", np.inf, 1.0),
    ("sigmoid", -np.inf, 0.0),
    ("tanh", 0.0, 0.0),
    ("tanh", 1e4, 1.0),
    ("tanh", -1e4, -1.0),
    ("tanh", np.inf, 1.0),
    ("tanh", -np.inf, -1.0),
    ("relu", 0.0, 0.0),
    ("relu", -0.0, 0.0),  # == ignores the sign: torch keeps -0.0, JAX returns +0.0
    ("relu", -1.0, 0.0),
    ("relu", 1e4, 1e4),
    ("relu", np.inf, np.inf),
    ("relu", -np.inf, 0.0),
]


@pytest.mark.parametrize("name, x, y", EXACT, ids=[f"{n}({x})" for n, x, _ in EXACT])
def test_activation_hits_the_exact_known_value(backend, name, x, y):
    got = backend.activation(name, np.array([x], np.float32))
    assert got.dtype == np.float32
    assert got[0] == y


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_activation_propagates_nan(backend, name):
    assert np.isnan(backend.activation(name, np.array([np.nan], np.float32))[0])


@pytest.mark.parametrize("name", ELEMENTWISE)
@pytest.mark.parametrize("grid", ["edges", "dense"])
def test_activation_matches_the_float64_oracle_within_4_ulps(backend, name, grid):
    x = GRID if grid == "edges" else DENSE
    worst = assert_within_ulps(backend.activation(name, x), reference(name, x))
    print(f"{backend.name} {name}: {worst:.2f} ulps from the float64 oracle")


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_twins_give_the_same_activation_values_within_8_ulps(torch_backend, jax_backend, name):
    x = np.concatenate([GRID, DENSE])
    torch_y, flax_y = torch_backend.activation(name, x), jax_backend.activation(name, x)
    if name in ("binary_step", "relu"):
        # Piecewise maps of exact inputs: no rounding anywhere, so bit-equal values, -0.0 included.
        np.testing.assert_array_equal(torch_y, flax_y)
        np.testing.assert_array_equal(np.signbit(torch_y), np.signbit(flax_y))
    else:
        assert_within_ulps(flax_y, torch_y, ulps=2 * ULPS)


# Softmax works on rows; each grid value v sits in the row [v, 0, -1].
SOFTMAX_ROWS = np.stack([GRID, np.zeros_like(GRID), -np.ones_like(GRID)], axis=1)  # (9, 3)


def test_softmax_is_exact_at_the_extremes_and_never_nan_for_finite_rows(backend):
    y = backend.activation("softmax", SOFTMAX_ROWS, dim=-1)
    finite = np.isfinite(SOFTMAX_ROWS).all(axis=1)
    assert not np.isnan(y[finite]).any()
    np.testing.assert_allclose(y[finite].sum(axis=1), 1.0, rtol=0, atol=TOL)
    np.testing.assert_array_equal(y[4], [1.0, 0.0, 0.0])  # [1e4, 0, -1]: e^-1e4 underflows to 0
    assert y[5][0] == 0.0  # [-1e4, 0, -1]
    assert y[7][0] == 0.0  # [-inf, 0, -1]: -inf is a mask, its weight is exactly 0
    assert np.isnan(y[6]).all()  # [inf, 0, -1]: inf - max = inf - inf = NaN, in both twins
    assert np.isnan(y[8]).all()  # NaN propagates to the whole row


def test_softmax_matches_the_float64_oracle(backend):
    rows = SOFTMAX_ROWS[np.isfinite(SOFTMAX_ROWS).all(axis=1) | np.isneginf(SOFTMAX_ROWS).any(axis=1)]
    assert_same_values(backend.activation("softmax", rows, dim=-1), reference_softmax(rows), TOL)


def test_softmax_dim_picks_the_axis(backend):
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    by_column = backend.activation("softmax", x, dim=0)
    np.testing.assert_allclose(by_column.sum(axis=0), 1.0, rtol=0, atol=TOL)
    # Not bit-equal: torch reduces along dim 0 with another kernel than along the last dim (1 ulp).
    assert_same_values(by_column, backend.activation("softmax", x.T.copy(), dim=-1).T, TOL)
    assert_same_values(by_column, reference_softmax(x.T).T, TOL)
    assert max_abs_diff(by_column, backend.activation("softmax", x, dim=-1)) > 0.1  # the axis matters


def test_twins_give_the_same_softmax_on_the_grid_rows(torch_backend, jax_backend):
    assert_same_values(
        torch_backend.activation("softmax", SOFTMAX_ROWS, dim=1),
        jax_backend.activation("softmax", SOFTMAX_ROWS, dim=1),
        TOL,
    )


# ----------------------------------------------------------------------------- gradients

# The float64 oracle is compared on the grid less NaN (its derivative there is a convention, not
# a value); the twins are compared on the whole grid: at NaN both follow torch's rule, masking
# ReLU's gradient where x <= 0 (false for NaN), so they pass the incoming gradient on alike.
GRAD_GRID = GRID[~np.isnan(GRID)]


def test_relu_gradient_at_nan_follows_torchs_rule_in_both_twins(backend):
    grad = backend.activation_vjp(
        "relu", np.array([np.nan, 2.0, -2.0], np.float32), np.array([3.0, 3.0, 3.0], np.float32)
    )
    np.testing.assert_array_equal(grad, [3.0, 3.0, 0.0])


def test_relu_gradient_at_zero_is_zero(backend):
    grad = backend.activation_vjp("relu", np.array([0.0, -0.0, 1.0, -1.0], np.float32), np.ones(4, np.float32))
    np.testing.assert_array_equal(grad, [0.0, 0.0, 1.0, 0.0])


def test_binary_step_gradient_is_zero_everywhere(backend):
    grad = backend.activation_vjp("binary_step", GRID, np.ones_like(GRID))
    np.testing.assert_array_equal(grad, np.zeros_like(GRID))  # NaN input included: 0, not NaN


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_activation_gradient_matches_the_float64_oracle(backend, name):
    x = np.concatenate([GRAD_GRID, DENSE])
    assert_within_ulps(backend.activation_vjp(name, x, np.ones_like(x)), reference_grad(name, x), atol=GRAD_ATOL)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_twins_give_the_same_activation_gradients(torch_backend, jax_backend, name):
    x = np.concatenate([GRID, DENSE])
    cotangent = np.linspace(-2, 2, x.size).astype(np.float32)  # not all ones, so scaling is checked too
    torch_grad, flax_grad = (
        torch_backend.activation_vjp(name, x, cotangent),
        jax_backend.activation_vjp(name, x, cotangent),
    )
    # each within ULPS + GRAD_ATOL of the truth (times |cotangent| <= 2), so within twice that of each other
    assert_within_ulps(flax_grad, torch_grad, ulps=2 * ULPS, atol=2 * 2 * GRAD_ATOL)


def softmax_vjp_reference(rows: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
    """J^T g for row-wise softmax, in float64: s * (g - <g, s>)."""
    s = reference_softmax(rows)
    g = cotangent.astype(np.float64)
    return s * (g - (g * s).sum(axis=-1, keepdims=True))


def test_softmax_gradients_match_between_twins_and_the_float64_oracle(torch_backend, jax_backend):
    rows = SOFTMAX_ROWS[np.isfinite(SOFTMAX_ROWS).all(axis=1)]  # (6, 3): the finite rows
    cotangent = np.random.default_rng(0).normal(size=rows.shape).astype(np.float32)
    want = softmax_vjp_reference(rows, cotangent)
    torch_grad = torch_backend.activation_vjp("softmax", rows, cotangent, dim=-1)
    flax_grad = jax_backend.activation_vjp("softmax", rows, cotangent, dim=-1)
    assert_same_values(torch_grad, want, TOL)
    assert_same_values(flax_grad, want, TOL)
    diff = assert_same_values(torch_grad, flax_grad, TOL)
    print(f"softmax' max|diff| torch vs flax: {diff:.3g}")
