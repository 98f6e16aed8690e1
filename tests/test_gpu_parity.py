"""Parity on a GPU: torch on CUDA against JAX on the GPU, at "highest" and at TF32 precision.

Skipped cleanly unless torch sees CUDA and JAX sees a GPU. Each test measures the max |diff| of the
logits, every layer, the loss and every gradient, prints them, and records them as JSON at the
path in $FASHION_TWINS_GPU_REPORT when that is set.
"""

from __future__ import annotations

import json
import math
import os

import pytest
from backends import FlaxBackend, TorchBackend, image_batch, label_batch, max_abs_diff

REPORT_ENV = "FASHION_TWINS_GPU_REPORT"

# "highest": full float32 matmuls on both sides (cuBLAS SGEMM; XLA without TF32). GPU kernels add in
# yet other orders (tiles, split-K), so the CPU argument of test_parity.py holds: a few u = 6e-8
# times sum_i |x_i w_i| <= 4.3, i.e. ~1e-6; 1e-5 leaves a factor 10 for the GPUs' reduction trees.
HIGHEST_TOL = 1e-5
# "tf32": each matmul input is rounded to a 10-bit mantissa (relative error 2^-11 = 4.9e-4), on
# each side independently. Random-sign errors over ~390 products of ~1e-2 give
# ~4.9e-4 * sqrt(390) * 1e-2 ~ 1e-4 per hidden value, shrinking through the layers; 1e-2 is a
# sanity bound (finite, and far below the ~0.1 logits), not a precision claim.
TF32_TOL = 1e-2


def _skip_reason() -> str:
    """'' when both frameworks see a GPU, else why the tests are skipped."""
    import torch

    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    import jax

    try:
        jax.devices("gpu")
    except RuntimeError:
        return "JAX sees no GPU device"
    return ""


SKIP_REASON = _skip_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(bool(SKIP_REASON), reason=SKIP_REASON or "both GPUs present")]


@pytest.fixture(scope="module")
def report():
    """Collects each precision's diffs; printed and written as JSON once the module is done."""
    import jax
    import torch

    record = {"torch_device": torch.cuda.get_device_name(0), "jax_device": str(jax.devices("gpu")[0]), "diffs": {}}
    yield record
    print(json.dumps(record, indent=2))
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "w") as f:
            json.dump(record, f, indent=2)


def measure(precision: str) -> dict:
    """Max |diff| torch-CUDA vs flax-GPU for one precision; the session's "highest" is restored after."""
    import jax

    # Fresh adapters: new jitted functions, so nothing compiled under another precision is reused.
    torch_gpu, flax_gpu = TorchBackend(device="cuda"), FlaxBackend(device=jax.devices("gpu")[0])
    try:
        torch_gpu.set_matmul_precision(precision)
        flax_gpu.set_matmul_precision(precision)
        torch_net = torch_gpu.init(seed=0)
        flax_net = flax_gpu.from_state_dict(torch_gpu.to_state_dict(torch_net))
        x, labels = image_batch(64, seed=0, layout="N,1,28,28"), label_batch(64, seed=0)
        diffs = {"logits": max_abs_diff(torch_gpu.logits(torch_net, x), flax_gpu.logits(flax_net, x))}
        torch_out, flax_out = torch_gpu.layer_outputs(torch_net, x), flax_gpu.layer_outputs(flax_net, x)
        diffs.update({f"layer {k}": max_abs_diff(torch_out[k], flax_out[k]) for k in torch_out})
        torch_loss, torch_dx, torch_grads = torch_gpu.loss_and_grads(torch_net, x, labels)
        flax_loss, flax_dx, flax_grads = flax_gpu.loss_and_grads(flax_net, x, labels)
        diffs["loss"] = abs(torch_loss - flax_loss)
        diffs["grad input"] = max_abs_diff(torch_dx, flax_dx)
        diffs.update({f"grad {k}": max_abs_diff(torch_grads[k], flax_grads[k]) for k in torch_grads})
    finally:
        torch_gpu.set_matmul_precision("highest")
        flax_gpu.set_matmul_precision("highest")
    print(f"[{precision}] " + "; ".join(f"{k}: {v:.3g}" for k, v in diffs.items()))
    return diffs


def test_gpu_twins_agree_within_1e_5_at_highest_precision(report):
    diffs = measure("highest")
    report["diffs"]["highest"] = diffs
    assert all(v <= HIGHEST_TOL for v in diffs.values()), diffs


def test_gpu_twins_stay_finite_and_within_1e_2_with_tf32_matmuls(report):
    diffs = measure("tf32")
    report["diffs"]["tf32"] = diffs
    assert all(math.isfinite(v) for v in diffs.values()), diffs
    assert all(v < TF32_TOL for v in diffs.values()), diffs
