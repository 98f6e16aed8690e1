"""Parity on a GPU: torch on CUDA against each JAX twin on the GPU, at "highest" and at TF32 precision.

The device comes from the `gpu` fixture (tests/conftest.py): the GPU, skipped cleanly where torch or
JAX sees none, or the CPU in the device check's rehearsal (--gpu-device cpu). Each test measures the
max |diff| of the logits, every layer, the loss and every gradient, and records them through
`gpu_figures` (the JSON file at $FASHION_TWINS_GPU_REPORT, rewritten after each record).
"""

from __future__ import annotations

import math

import pytest
from backends import FlaxBackend, NnxBackend, TorchBackend, image_batch, label_batch, max_abs_diff

pytestmark = pytest.mark.gpu

# "highest": full float32 matmuls on both sides (cuBLAS SGEMM; XLA without TF32). GPU kernels add in
# yet other orders (tiles, split-K), so the CPU argument of test_parity.py holds: a few u = 6e-8
# times sum_i |x_i w_i| <= 4.3, i.e. ~1e-6; 1e-5 leaves a factor 10 for the GPUs' reduction trees.
HIGHEST_TOL = 1e-5
# "tf32": each matmul input is rounded to a 10-bit mantissa (relative error 2^-11 = 4.9e-4), on
# each side independently. Random-sign errors over ~390 products of ~1e-2 give
# ~4.9e-4 * sqrt(390) * 1e-2 ~ 1e-4 per hidden value, shrinking through the layers; 1e-2 is a
# sanity bound (finite, and far below the ~0.1 logits), not a precision claim.
TF32_TOL = 1e-2
JAX_BACKENDS = {"flax": FlaxBackend, "nnx": NnxBackend}


def measure(gpu, precision: str, twin: str) -> dict:
    """Max |diff| torch vs one JAX twin on the gpu fixture's device; the session's "highest" is restored after."""
    # Fresh adapters: new jitted functions, so nothing compiled under another precision is reused.
    torch_gpu, jax_gpu = TorchBackend(device=gpu.torch), JAX_BACKENDS[twin](device=gpu.jax_device())
    try:
        torch_gpu.set_matmul_precision(precision)
        jax_gpu.set_matmul_precision(precision)
        torch_net = torch_gpu.init(seed=0)
        jax_net = jax_gpu.from_state_dict(torch_gpu.to_state_dict(torch_net))
        x, labels = image_batch(64, seed=0, layout="N,1,28,28"), label_batch(64, seed=0)
        diffs = {"logits": max_abs_diff(torch_gpu.logits(torch_net, x), jax_gpu.logits(jax_net, x))}
        torch_out, jax_out = torch_gpu.layer_outputs(torch_net, x), jax_gpu.layer_outputs(jax_net, x)
        diffs.update({f"layer {k}": max_abs_diff(torch_out[k], jax_out[k]) for k in torch_out})
        torch_loss, torch_dx, torch_grads = torch_gpu.loss_and_grads(torch_net, x, labels)
        jax_loss, jax_dx, jax_grads = jax_gpu.loss_and_grads(jax_net, x, labels)
        diffs["loss"] = abs(torch_loss - jax_loss)
        diffs["grad input"] = max_abs_diff(torch_dx, jax_dx)
        diffs.update({f"grad {k}": max_abs_diff(torch_grads[k], jax_grads[k]) for k in torch_grads})
    finally:
        torch_gpu.set_matmul_precision("highest")
        jax_gpu.set_matmul_precision("highest")
    return {k: float(v) for k, v in diffs.items()}


@pytest.mark.parametrize("twin", ["flax", "nnx"])
def test_gpu_twins_agree_within_1e_5_at_highest_precision(gpu, gpu_figures, twin):
    diffs = measure(gpu, "highest", twin)
    gpu_figures.record("parity_highest", f"torch vs {twin}", diffs)
    assert all(v <= HIGHEST_TOL for v in diffs.values()), diffs


@pytest.mark.parametrize("twin", ["flax", "nnx"])
def test_gpu_twins_stay_finite_and_within_1e_2_with_tf32_matmuls(gpu, gpu_figures, twin):
    diffs = measure(gpu, "tf32", twin)
    gpu_figures.record("parity_tf32", f"torch vs {twin}", diffs)
    assert all(math.isfinite(v) for v in diffs.values()), diffs
    assert all(v < TF32_TOL for v in diffs.values()), diffs
