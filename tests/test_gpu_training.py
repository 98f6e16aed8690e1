"""The GPU training paths: each torch engine, the hand-written step, the flax twin's compiled epoch, lockstep,
resume and each twin's peak device memory.

The device comes from the `gpu` fixture (tests/conftest.py): torch on CUDA and JAX on its GPU, skipped
cleanly where either is missing, or the CPU in the device check's rehearsal (--gpu-device cpu), where
the CUDA-only cases (cuda_graph) skip with their reason. The torch engine is create_train_state's,
train_and_evaluate's and lockstep's `engine` argument (a torch-only option, not a TrainConfig field).
"""

from __future__ import annotations

import importlib
import time

import numpy as np
import pytest
from twin_data import real_data, separable_set

from fashion_common.config import TrainConfig, tutorial_config
from fashion_common.spec import TUTORIAL_PARAMETER_COUNT

pytestmark = pytest.mark.gpu

CUDA_GRAPH = "cuda_graph replays CUDA graphs"


def device_batch(gpu, n: int = 256):
    """n random uint8 images (n, 28, 28) and labels on the gpu fixture's torch device, the same on every run."""
    import torch

    generator = torch.Generator(gpu.torch).manual_seed(0)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, device=gpu.torch, generator=generator)
    return images, torch.arange(n, device=gpu.torch) % 10


def synchronize(gpu) -> None:
    import torch

    if gpu.torch == "cuda":
        torch.cuda.synchronize()


def test_hand_written_torch_step_on_cuda_matches_autograd_on_cuda(gpu):
    import torch

    from fashion_torch import fused as hand_written
    from fashion_torch.train import create_train_state

    config = TrainConfig(device=gpu.config, optimizer="adamw")
    images, labels = device_batch(gpu)
    ref = create_train_state(config, total_steps=4, engine="eager")
    fused = create_train_state(config, total_steps=4, engine="fused")
    assert (ref.engine, fused.engine) == ("eager", "fused")
    loss, _ = ref.model_loss(images, labels)
    loss.backward()
    hand_written.train_step(fused, images, labels)
    for p_ref, p_fused in zip(ref.model.parameters(), fused.model.parameters(), strict=True):
        # identical weights before the step: gradients differ by fp32 reassociation only (~100 ulps of ~1e-3)
        assert torch.max(torch.abs(p_ref.grad - p_fused.grad)).item() <= 1e-7


@pytest.mark.parametrize("engine", ["compile", "cuda_graph"])
def test_compiled_torch_engines_on_cuda_take_the_same_steps_as_eager_autograd(gpu, gpu_figures, engine):
    from fashion_torch import to_state_dict
    from fashion_torch.train import create_train_state, train_step

    if engine == "cuda_graph":
        gpu.cuda_only(CUDA_GRAPH)
    config = tutorial_config(device=gpu.config, momentum=0.9)
    images, labels = device_batch(gpu, 64)
    eager = create_train_state(config, total_steps=50, engine="eager")
    compiled = create_train_state(config, total_steps=50, engine=engine)
    assert compiled.engine == engine
    start = time.perf_counter()
    compiled_loss, _ = train_step(compiled, images, labels)  # the first step pays the cold compile
    float(compiled_loss)
    gpu_figures.record("torch_first_step_s", engine, time.perf_counter() - start)
    eager_loss, _ = train_step(eager, images, labels)
    assert abs(float(eager_loss) - float(compiled_loss)) <= 1e-5
    for _ in range(49):
        eager_loss, _ = train_step(eager, images, labels)
        compiled_loss, _ = train_step(compiled, images, labels)
        # Inductor's fused kernels sum in other orders than cuBLAS/ATen: fp32 rounding only, 1e-5 as lockstep
        assert abs(float(eager_loss) - float(compiled_loss)) <= 1e-5
    synchronize(gpu)
    a, b = to_state_dict(eager.model), to_state_dict(compiled.model)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-5


def test_flax_scanned_slices_on_the_gpu_match_per_step_updates(gpu):
    import fashion_flax
    from fashion_common.data import batch_order
    from fashion_flax.train import create_train_state, put_data, train_epoch, train_step

    data = separable_set(n_per_class=40)
    config = TrainConfig(device=gpu.config, batch_size=40)
    device = gpu.jax_device()
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
def test_resuming_on_cuda_restores_optimizer_and_scheduler_to_the_same_final_weights(gpu, engine, tmp_path):
    import fashion_torch
    from fashion_common.checkpoint import read_train_state
    from fashion_torch.train import train_and_evaluate

    if engine == "cuda_graph":
        gpu.cuda_only(CUDA_GRAPH)
    data = separable_set(n_per_class=40)
    config = TrainConfig(epochs=3, batch_size=32, device=gpu.config)
    full, _ = train_and_evaluate(config, data, quiet=True, log=lambda s: None, engine=engine)
    assert full.engine == engine
    ckpt = tmp_path / "run.safetensors"

    class Crash(Exception):
        pass

    def crash_after_first(line):
        if "epoch   1/" in line:
            raise Crash(line)

    with pytest.raises(Crash):
        train_and_evaluate(config, data, out=ckpt, quiet=True, log=crash_after_first, engine=engine)
    assert read_train_state(ckpt)[1]["epoch"] == 1
    resumed, _ = train_and_evaluate(config, data, resume=ckpt, quiet=True, log=lambda s: None, engine=engine)
    a, b = fashion_torch.to_state_dict(full.model), fashion_torch.to_state_dict(resumed.model)
    # eager is deterministic on one GPU for these ops; compiled kernels too (no atomics in an MLP's GEMMs)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.data
@pytest.mark.parametrize("engine", ["eager", "compile", "cuda_graph"])
def test_torch_autograd_on_cuda_and_flax_on_the_gpu_trained_in_lockstep_stay_within_1e_5(gpu, gpu_figures, engine):
    from fashion_compare.lockstep import lockstep

    if engine == "cuda_graph":
        gpu.cuda_only(CUDA_GRAPH)
    start = time.perf_counter()
    result = lockstep(
        real_data(),
        tutorial_config(epochs=1, device=gpu.config),
        steps=200,
        weight_every=50,
        precision="highest",
        engine=engine,
    )
    figures = {k: result[k] for k in ("steps", "max_loss_diff", "final_weight_diff")}
    gpu_figures.record(
        "lockstep_highest", f"torch {engine} vs flax", {**figures, "seconds": time.perf_counter() - start}
    )
    assert result["engine"] == engine
    assert result["max_loss_diff"] <= 1e-5 and result["final_weight_diff"] <= 1e-5


# float32 weights of the tutorial's MLP: the least any twin holding them on the device can use
WEIGHT_BYTES = 4 * TUTORIAL_PARAMETER_COUNT


@pytest.mark.parametrize("twin", ["torch", "flax", "nnx"])
def test_each_twin_trains_an_epoch_on_the_gpu_and_reports_its_peak_device_memory(gpu, gpu_figures, twin):
    train = importlib.import_module(f"fashion_{twin}.train")
    data = separable_set(n_per_class=40)
    config = TrainConfig(epochs=1, batch_size=40, device=gpu.config)
    if twin == "torch" and not gpu.rehearsal:
        import torch

        torch.cuda.reset_peak_memory_stats()
    state, metrics = train.train_and_evaluate(config, data, quiet=True, log=lambda s: None)
    memory = peak_memory(gpu, twin)
    gpu_figures.record("peak_memory_bytes", twin, memory)
    assert metrics["config"]["precision"] == "highest"  # trained at the one default precision
    if gpu.rehearsal:  # the CPU has no device allocator to ask
        assert memory is None
    else:
        assert memory["peak_bytes"] >= WEIGHT_BYTES, memory


def peak_memory(gpu, twin: str) -> dict | None:
    """The device allocator's peak: torch's since the reset above; JAX's over the whole process (no reset)."""
    if gpu.rehearsal:
        return None
    if twin == "torch":
        import torch

        return {"peak_bytes": torch.cuda.max_memory_allocated(), "scope": "this test (peak reset first)"}
    stats = gpu.jax_device().memory_stats() or {}
    return {
        "peak_bytes": stats.get("peak_bytes_in_use", 0),
        "bytes_in_use": stats.get("bytes_in_use", 0),
        "scope": "the whole pytest process so far (JAX's peak has no reset)",
    }
