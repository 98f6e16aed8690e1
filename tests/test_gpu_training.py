"""The GPU training paths: the torch twin's fused step on CUDA and the flax twin's compiled epoch on the GPU.

Skipped cleanly unless torch sees CUDA and JAX sees a GPU (see test_gpu_parity.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from fashion_common.config import TrainConfig, tutorial_config

from test_gpu_parity import SKIP_REASON
from twin_data import real_data, separable_set

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(bool(SKIP_REASON), reason=SKIP_REASON or "both GPUs present")]


def test_fused_torch_step_on_cuda_matches_autograd_on_cuda():
    import torch

    from fashion_torch import set_matmul_precision
    from fashion_torch.train import autograd_train_step, create_train_state, fused_train_step

    set_matmul_precision("highest")
    config = TrainConfig(device="gpu", optimizer="adamw")
    images = torch.randint(0, 256, (256, 28, 28), dtype=torch.uint8, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    labels = torch.arange(256, device="cuda") % 10
    ref, fused = create_train_state(config, total_steps=4), create_train_state(config, total_steps=4)
    autograd_train_step(ref, images, labels)
    fused_train_step(fused, images, labels)
    for p_ref, p_fused in zip(ref.model.parameters(), fused.model.parameters()):
        # identical weights before the step: gradients differ by fp32 reassociation only (~100 ulps of ~1e-3)
        assert torch.max(torch.abs(p_ref.grad - p_fused.grad)).item() <= 1e-7


def test_flax_scanned_slices_on_the_gpu_match_per_step_updates():
    import jax

    import fashion_flax
    from fashion_common.data import batch_order
    from fashion_flax.train import create_train_state, put_data, train_epoch, train_step

    fashion_flax.set_matmul_precision("highest")
    data = separable_set(n_per_class=40)
    config = TrainConfig(device="gpu", batch_size=40)
    device = jax.devices("gpu")[0]
    on_device = put_data(data, device)
    order = batch_order(0, 1, len(data.train_labels), config.batch_size)
    scanned, _ = train_epoch(create_train_state(config, device=device, total_steps=len(order)), on_device, order, config, None)
    stepped = create_train_state(config, device=device, total_steps=len(order))
    for idx in order:
        stepped, _ = train_step(stepped, on_device.train_images[idx], on_device.train_labels[idx], config.label_smoothing)
    a, b = fashion_flax.to_state_dict(scanned.params), fashion_flax.to_state_dict(stepped.params)
    # the same ops in one program or in many: XLA may fuse differently, so allow fp32 rounding (1e-6)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-6


@pytest.mark.data
def test_twins_trained_in_lockstep_on_the_gpu_stay_within_1e_5():
    from fashion_compare.lockstep import lockstep

    result = lockstep(real_data(), tutorial_config(epochs=1, device="gpu"), steps=200, weight_every=50, precision="highest")
    assert result["max_loss_diff"] <= 1e-5 and result["final_weight_diff"] <= 1e-5
