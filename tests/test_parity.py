"""Same weights, same numbers: the twins compared on CPU, float32, matmul precision pinned "highest".

As in Hugging Face's PT/Flax equivalence tests, weights are converted and the outputs compared as
a max absolute difference. Each JAX twin (linen "flax", and "nnx") is held against torch; weights
start in either twin of the pair; the conversion goes through the canonical state_dict (torch
layout), so a transpose mistake shows up here as a ~1e-2 error.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from backends import get_backend, image_batch, label_batch, max_abs_diff

from fashion_common.spec import DEFAULT_SPEC, ModelSpec

# TOL = 1e-6 on the max |diff| of logits and hidden activations. Two correct float32 dot products
# of the same numbers, added in different orders (torch: oneDNN/MKL; XLA: Eigen), differ by a few
# units of roundoff u = 6e-8 times sum_i |x_i w_i| (the textbook bound is n u sum_i |x_i w_i|;
# rounding errors of random sign and SIMD-blocked sums leave a few u in practice). In the
# tutorial's ReLU network the largest sum_i |x_i w_i| is 4.3, in the first layer: ~390 nonzero
# pixels in [0, 1] times weights within +-1/sqrt(784) = +-0.036, each product ~1e-2. So
# 1e-6 ~ 4 u * 4.3. Measured here: 4-6e-7 in the first hidden layer, <= 1.5e-7 on the logits.
# A layout or transpose bug moves values by ~1e-2, four orders of magnitude more.
# The inputs are image-like, half background zeros as in Fashion-MNIST: dense uniform noise has
# twice the nonzero terms and measures up to 1.1e-6 in the first layer.
TOL = 1e-6
# Sigmoid hidden units are all ~0.5, never 0, so the next Linear adds 512 same-sign inputs and
# sum_i |x_i w_i| reaches 6.1: the same few-u argument gives 2e-6 (measured 0.9-1.2e-6).
DENSE_TOL = 2e-6

# Gradients of the mean cross-entropy are small (|g| <= ~5e-2: the mean over 64 examples divides
# them), so besides the absolute 1e-6 each must also be within GRAD_RTOL of its own largest entry:
# 1e-5, ten times the forward's relative error budget (1e-6 at |h| ~ 1), for backward passes that
# chain three matmuls. Measured: <= 1e-6 relative.
GRAD_RTOL = 1e-5

# (JAX twin, where the weights are initialized, spec). Flax inits cost a compile each, so only the
# default spec starts from a JAX twin; the other activations check that the twins apply them in the
# same place.
JAX_TWINS = ("flax", "nnx")
CASES = [
    case
    for twin in JAX_TWINS
    for case in [
        (twin, "torch", DEFAULT_SPEC, TOL),
        (twin, twin, DEFAULT_SPEC, TOL),
        (twin, "torch", ModelSpec(output_activation="relu"), TOL),
        (twin, "torch", ModelSpec(activation="tanh"), TOL),  # sum_i |x_i w_i| <= 2.4 after tanh
        (twin, "torch", ModelSpec(activation="sigmoid"), DENSE_TOL),
    ]
]
CASE_IDS = [
    f"{twin}-{name}" for twin in JAX_TWINS for name in ("torch-init", f"{twin}-init", "output-relu", "tanh", "sigmoid")
]


def test_matmul_precision_is_pinned_to_full_float32_in_both_twins_while_they_are_compared(highest_matmul_precision):
    """Runs after conftest's session fixture has pinned the precision (a module-level assert would run before it)."""
    import torch

    assert highest_matmul_precision == "highest"
    assert jax.config.jax_default_matmul_precision == "highest"
    assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cuda.matmul.allow_tf32


@pytest.fixture(scope="module", params=CASES, ids=CASE_IDS)
def twin_nets(request, torch_backend):
    """(torch net, JAX twin's backend, its net, tolerance): the same weights, converted from the case's source."""
    twin, source, spec, tol = request.param
    jax_backend = get_backend(twin)
    if source == "torch":
        torch_net = torch_backend.init(seed=0, spec=spec)
        jax_net = jax_backend.from_state_dict(torch_backend.to_state_dict(torch_net), spec)
    else:
        jax_net = jax_backend.init(seed=0, spec=spec)
        torch_net = torch_backend.from_state_dict(jax_backend.to_state_dict(jax_net), spec)
    return torch_net, jax_backend, jax_net, tol


@pytest.fixture(scope="module")
def batch():
    """64 image-like inputs as (N, 1, 28, 28), the DataLoader's layout, and their labels."""
    return image_batch(64, seed=0, layout="N,1,28,28"), label_batch(64, seed=0)


def test_jax_twin_logits_match_torch_logits_for_same_weights(torch_backend, twin_nets, batch):
    torch_net, flax_backend, flax_net, tol = twin_nets
    x, _ = batch
    torch_logits, flax_logits = torch_backend.logits(torch_net, x), flax_backend.logits(flax_net, x)
    diff = max_abs_diff(torch_logits, flax_logits)
    print(f"logits max|diff| = {diff:.3g}")
    assert diff <= tol
    np.testing.assert_array_equal(torch_logits.argmax(1), flax_logits.argmax(1))  # the same predictions
    assert np.abs(torch_logits).max() > 1e-2  # non-trivial values, so the comparison means something


def test_jax_twin_layer_outputs_match_torch_layer_outputs_for_same_weights(torch_backend, twin_nets, batch):
    torch_net, flax_backend, flax_net, tol = twin_nets
    x, _ = batch
    torch_out, flax_out = torch_backend.layer_outputs(torch_net, x), flax_backend.layer_outputs(flax_net, x)
    assert list(torch_out) == list(flax_out)
    diffs = {name: max_abs_diff(torch_out[name], flax_out[name]) for name in torch_out}
    print("layer max|diff| = " + ", ".join(f"{k}: {v:.3g}" for k, v in diffs.items()))
    assert diffs["flatten"] == 0.0  # a reshape: no arithmetic
    assert max(diffs.values()) <= tol, diffs


def test_jax_twin_gradients_match_torch_gradients_for_the_input_and_every_parameter(torch_backend, twin_nets, batch):
    torch_net, flax_backend, flax_net, tol = twin_nets
    x, labels = batch
    torch_loss, torch_dx, torch_grads = torch_backend.loss_and_grads(torch_net, x, labels)
    flax_loss, flax_dx, flax_grads = flax_backend.loss_and_grads(flax_net, x, labels)
    # The loss is ~2.3 (log 10 at init); 1e-6 is 4 ulps there.
    assert abs(torch_loss - flax_loss) <= TOL
    # Canonical torch layout on both sides: the adapter transposed the flax kernel gradients.
    assert list(torch_grads) == list(flax_grads)
    grads = {"input": (torch_dx, flax_dx), **{k: (torch_grads[k], flax_grads[k]) for k in torch_grads}}
    report = []
    for name, (t, f) in grads.items():
        diff = max_abs_diff(t, f)
        scale = float(np.abs(t).max())
        report.append(f"{name}: {diff:.3g} (max|g| {scale:.2g})")
        assert diff <= TOL, name
        assert diff <= GRAD_RTOL * scale, name
        assert scale > 0, name  # every gradient is non-zero, so none is compared vacuously
    print(f"loss diff = {abs(torch_loss - flax_loss):.3g}; grad max|diff| = " + "; ".join(report))


def test_nnx_and_linen_give_the_same_logits_layers_and_gradients_for_the_same_weights(batch):
    """Both Flax twins lower the same XLA ops (dot_general, then the bias add) on the same weights.

    Measured bit-equal on this CPU; the assert allows the few-ulp 1e-6 of test_parity's TOL, since XLA
    may fuse two differently written programs differently (an added output activation, another host).
    """
    flax_backend, nnx_backend = get_backend("flax"), get_backend("nnx")
    linen_net = flax_backend.init(seed=0)
    nnx_net = nnx_backend.from_state_dict(flax_backend.to_state_dict(linen_net))
    x, labels = batch
    diffs = {"logits": max_abs_diff(flax_backend.logits(linen_net, x), nnx_backend.logits(nnx_net, x))}
    linen_layers, nnx_layers = flax_backend.layer_outputs(linen_net, x), nnx_backend.layer_outputs(nnx_net, x)
    assert list(linen_layers) == list(nnx_layers)
    diffs.update({name: max_abs_diff(linen_layers[name], nnx_layers[name]) for name in linen_layers})
    linen_loss, linen_dx, linen_grads = flax_backend.loss_and_grads(linen_net, x, labels)
    nnx_loss, nnx_dx, nnx_grads = nnx_backend.loss_and_grads(nnx_net, x, labels)
    diffs["loss"] = abs(linen_loss - nnx_loss)
    diffs["input grad"] = max_abs_diff(linen_dx, nnx_dx)
    diffs.update({f"grad {k}": max_abs_diff(linen_grads[k], nnx_grads[k]) for k in linen_grads})
    print("nnx vs linen max|diff| = " + ", ".join(f"{k}: {v:.3g}" for k, v in diffs.items()))
    assert max(diffs.values()) <= TOL, diffs


# ----------------------------------------------------------------------------- exact round trips


def test_torch_to_flax_to_torch_round_trip_is_exact(torch_backend, flax_backend, batch):
    torch_net = torch_backend.init(seed=0)
    state = torch_backend.to_state_dict(torch_net)
    flax_state = flax_backend.to_state_dict(flax_backend.from_state_dict(state))
    back = torch_backend.to_state_dict(torch_backend.from_state_dict(flax_state))
    assert list(back) == list(state)
    for key in state:
        assert np.array_equal(flax_state[key], state[key]), key
        assert np.array_equal(back[key], state[key]), key
    x, _ = batch
    np.testing.assert_array_equal(
        torch_backend.logits(torch_backend.from_state_dict(back), x), torch_backend.logits(torch_net, x)
    )


def test_flax_to_torch_to_flax_round_trip_is_exact(torch_backend, flax_backend):
    flax_net = flax_backend.init(seed=0)
    torch_state = torch_backend.to_state_dict(torch_backend.from_state_dict(flax_backend.to_state_dict(flax_net)))
    back = flax_backend.from_state_dict(torch_state)
    leaves, treedef = jax.tree_util.tree_flatten(flax_net.params)
    back_leaves, back_treedef = jax.tree_util.tree_flatten(back.params)
    assert back_treedef == treedef
    for leaf, back_leaf in zip(leaves, back_leaves, strict=True):
        assert back_leaf.shape == leaf.shape and back_leaf.dtype == leaf.dtype
        assert np.array_equal(np.asarray(back_leaf), np.asarray(leaf))


ROUND_TRIPS = [("torch", "nnx"), ("nnx", "torch"), ("flax", "nnx"), ("nnx", "flax")]


@pytest.mark.parametrize("start, via", ROUND_TRIPS, ids=[f"{a}-to-{b}-to-{a}" for a, b in ROUND_TRIPS])
def test_round_trips_through_the_nnx_twin_are_exact(start, via, batch):
    """Weights born in `start`, converted into `via` and back: bit-equal state_dicts and logits."""
    first, second = get_backend(start), get_backend(via)
    net = first.init(seed=0)
    state = first.to_state_dict(net)
    there = second.to_state_dict(second.from_state_dict(state))
    back = first.from_state_dict(there)
    back_state = first.to_state_dict(back)
    assert list(back_state) == list(there) == list(state)
    for key in state:
        assert np.array_equal(there[key], state[key]), key
        assert np.array_equal(back_state[key], state[key]), key
    x, _ = batch
    np.testing.assert_array_equal(first.logits(back, x), first.logits(net, x))
