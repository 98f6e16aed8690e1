"""The GPU training paths: each torch engine on CUDA, the hand-written step, the flax twin's compiled epoch,
lockstep and resume.

Skipped cleanly unless torch sees CUDA and JAX sees a GPU (see test_gpu_parity.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_gpu_parity import SKIP_REASON
from twin_data import real_data, separable_set

from fashion_common.config import TrainConfig, tutorial_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(bool(SKIP_REASON), reason=SKIP_REASON or "both GPUs present")]


def cuda_batch(n: int = 256):
    import torch

    images = torch.randint(
        0, 256, (n, 28, 28), dtype=torch.uint8, device="cuda", generator=torch.Generator("cuda").manual_seed(0)
    )
    return images, torch.arange(n, device="cuda") % 10


def test_hand_written_torch_step_on_cuda_matches_autograd_on_cuda():
    import torch

    from fashion_torch import fused as hand_written
    from fashion_torch import set_matmul_precision
    from fashion_torch.train import create_train_state

    set_matmul_precision("highest")
    config = TrainConfig(device="gpu", optimizer="adamw")
    images, labels = cuda_batch()
    ref, fused = (
        create_train_state(config.replace(engine="eager"), total_steps=4),
        create_train_state(config.replace(engine="fused"), total_steps=4),
    )
    loss, _ = ref.model_loss(images, labels)
    loss.backward()
    hand_written.train_step(fused, images, labels)
    for p_ref, p_fused in zip(ref.model.parameters(), fused.model.parameters(), strict=True):
        # identical weights before the step: gradients differ by fp32 reassociation only (~100 ulps of ~1e-3)
        assert torch.max(torch.abs(p_ref.grad - p_fused.grad)).item() <= 1e-7


@pytest.mark.parametrize("engine", ["compile", "cuda_graph"])
def test_compiled_torch_engines_on_cuda_take_the_same_steps_as_eager_autograd(engine):
    import torch

    from fashion_torch import set_matmul_precision, to_state_dict
    from fashion_torch.train import create_train_state, train_step

    set_matmul_precision("highest")
    config = tutorial_config(device="gpu", momentum=0.9)
    images, labels = cuda_batch(64)
    eager, compiled = (
        create_train_state(config.replace(engine="eager"), total_steps=50),
        create_train_state(config.replace(engine=engine), total_steps=50),
    )
    assert compiled.engine == engine
    for _ in range(50):
        eager_loss, _ = train_step(eager, images, labels)
        compiled_loss, _ = train_step(compiled, images, labels)
        # Inductor's fused kernels sum in other orders than cuBLAS/ATen: fp32 rounding only, 1e-5 as lockstep
        assert abs(float(eager_loss) - float(compiled_loss)) <= 1e-5
    torch.cuda.synchronize()
    a, b = to_state_dict(eager.model), to_state_dict(compiled.model)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-5


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
    scanned, _ = train_epoch(
        create_train_state(config, device=device, total_steps=len(order)), on_device, order, config, None
    )
    stepped = create_train_state(config, device=device, total_steps=len(order))
    for idx in order:
        stepped, _ = train_step(
            stepped, on_device.train_images[idx], on_device.train_labels[idx], config.label_smoothing
        )
    a, b = fashion_flax.to_state_dict(scanned.params), fashion_flax.to_state_dict(stepped.params)
    # the same ops in one program or in many: XLA may fuse differently, so allow fp32 rounding (1e-6)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-6


@pytest.mark.parametrize("engine", ["eager", "compile", "cuda_graph"])
def test_resuming_on_cuda_restores_optimizer_and_scheduler_to_the_same_final_weights(engine, tmp_path):
    import fashion_torch
    from fashion_common.checkpoint import read_train_state
    from fashion_torch.train import train_and_evaluate

    data = separable_set(n_per_class=40)
    config = TrainConfig(epochs=3, batch_size=32, device="gpu", engine=engine)
    full, _ = train_and_evaluate(config, data, quiet=True, log=lambda s: None)
    ckpt = tmp_path / "run.safetensors"

    class Crash(Exception):
        pass

    def crash_after_first(line):
        if "epoch   1/" in line:
            raise Crash(line)

    with pytest.raises(Crash):
        train_and_evaluate(config, data, out=ckpt, quiet=True, log=crash_after_first)
    assert read_train_state(ckpt)[1]["epoch"] == 1
    resumed, _ = train_and_evaluate(config, data, resume=ckpt, quiet=True, log=lambda s: None)
    a, b = fashion_torch.to_state_dict(full.model), fashion_torch.to_state_dict(resumed.model)
    # eager is deterministic on one GPU for these ops; compiled kernels too (no atomics in an MLP's GEMMs)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.data
@pytest.mark.parametrize("engine", ["eager", "compile", "cuda_graph"])
def test_torch_autograd_on_cuda_and_flax_on_the_gpu_trained_in_lockstep_stay_within_1e_5(engine):
    from fashion_compare.lockstep import lockstep

    result = lockstep(
        real_data(),
        tutorial_config(epochs=1, device="gpu", engine=engine),
        steps=200,
        weight_every=50,
        precision="highest",
    )
    assert result["engine"] == engine
    assert result["max_loss_diff"] <= 1e-5 and result["final_weight_diff"] <= 1e-5
