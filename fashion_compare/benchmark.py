"""Speed, measured side by side in one process: the tutorial's loop, both twins, and the FLOP floor.

The workload is one epoch of the 784-512-512-10 MLP at batch 64 with plain SGD over the 60,000
training images. Every variant is timed as the median of `repeats` epochs after a warm-up epoch
(which also pays for compilation), on the same device, in the same run.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from fashion_compare import device_label, set_matmul_precision
from fashion_common.config import TrainConfig, tutorial_config
from fashion_common.data import FashionData, batch_order, prepare_raw
from fashion_common.spec import TUTORIAL_PARAMETER_COUNT

# forward (2 FLOPs per weight per example) + backward (4): 6 * params * examples
EPOCH_FLOPS = 6 * TUTORIAL_PARAMETER_COUNT * 60_000


def median_time(run_epoch: Callable[[int], None], repeats: int = 3, warmup: int = 1) -> List[float]:
    """Seconds of each timed call of run_epoch(epoch); run_epoch must block until its device is done."""
    for i in range(warmup):
        run_epoch(-1 - i)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        run_epoch(i)
        times.append(time.perf_counter() - start)
    return times


# ----------------------------------------------------------------------------- the matmul ceiling


def matmul_rate(device: str, precision: str, n: Optional[int] = None, repeats: int = 5) -> Dict[str, float]:
    """Measured fp32 (or tf32) matmul FLOP/s of an n x n x n product, through torch and through JAX; the larger is the ceiling."""
    import jax
    import jax.numpy as jnp
    import torch

    import fashion_flax

    set_matmul_precision(precision)
    n = n or (8192 if device == "gpu" else 2048)
    rng = np.random.default_rng(0)
    a_np, b_np = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    rates = {}

    t_dev = "cuda" if device == "gpu" else "cpu"
    a, b = torch.from_numpy(a_np).to(t_dev), torch.from_numpy(b_np).to(t_dev)
    sync = torch.cuda.synchronize if t_dev == "cuda" else (lambda: None)

    def torch_mm(_):
        torch.mm(a, b)
        sync()

    rates["torch"] = 2 * n**3 / statistics.median(median_time(torch_mm, repeats))

    j_dev = fashion_flax.resolve_device(device)
    ja, jb = jax.device_put(a_np, j_dev), jax.device_put(b_np, j_dev)
    dot = jax.jit(jnp.dot)
    rates["jax"] = 2 * n**3 / statistics.median(median_time(lambda _: dot(ja, jb).block_until_ready(), repeats))
    rates["ceiling"] = max(rates["torch"], rates["jax"])
    rates["n"] = n
    return rates


# ----------------------------------------------------------------------------- the variants


def tutorial_epoch_fn(device: str, data_dir=None) -> Callable[[int], None]:
    """The tutorial's own loop: torchvision dataset + ToTensor + DataLoader(batch 64, shuffle), eager SGD lr 1e-3."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision.transforms import ToTensor

    import fashion_torch

    root = prepare_raw(data_dir)
    training_data = datasets.FashionMNIST(str(root), train=True, download=False, transform=ToTensor())
    t_dev = "cuda" if device == "gpu" else "cpu"
    model = fashion_torch.NeuralNetwork().to(t_dev)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)

    def run(_epoch):
        loader = DataLoader(training_data, batch_size=64, shuffle=True, generator=generator)
        model.train()
        for X, y in loader:
            X, y = X.to(t_dev), y.to(t_dev)
            loss = loss_fn(model(X), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        if t_dev == "cuda":
            torch.cuda.synchronize()

    return run


def twin_epoch_fn(backend: str, data: FashionData, device: str, config: Optional[TrainConfig] = None) -> Callable[[int], None]:
    """One epoch of a twin's own training path (quiet: no progress bar), data already on the device."""
    import importlib

    train = importlib.import_module(f"fashion_{backend}.train")
    pkg = importlib.import_module(f"fashion_{backend}")
    config = config or tutorial_config(epochs=1, device=device)
    dev = pkg.resolve_device(device)
    on_device = train.put_data(data, dev)
    steps = config.steps_per_epoch(len(data.train_labels))
    holder = {"state": train.create_train_state(config, device=dev, total_steps=steps * 100)}

    def run(epoch):
        order = batch_order(config.seed, epoch + 10, len(data.train_labels), config.batch_size)
        holder["state"], _ = train.train_epoch(holder["state"], on_device, order, config, None)  # returns host floats: synced

    return run


def benchmark(data: FashionData, device: str = "cpu", precision: str = "fp32", repeats: int = 3, tutorial_repeats: Optional[int] = None, data_dir=None, log=print) -> dict:
    """Time the four variants for one precision mode; returns the JSON object the issue names."""
    set_precision(precision)
    mode = {"fp32": "highest", "tf32": "tf32"}[precision]
    steps = 60_000 // 64
    result = {"device": device_label(device), "precision": precision, "steps_per_epoch": steps, "repeats": repeats}

    log(f"[benchmark] {precision}: matmul ceiling")
    rates = matmul_rate(device, mode)
    result["matmul_flops"] = rates
    for name, fn, n in (
        ("torch", twin_epoch_fn("torch", data, device), repeats),
        ("flax", twin_epoch_fn("flax", data, device), repeats),
        ("tutorial", tutorial_epoch_fn(device, data_dir), tutorial_repeats or repeats),
    ):
        log(f"[benchmark] {precision}: {name} ({n} timed epochs after 1 warm-up)")
        times = median_time(fn, n)
        result[f"{name}_s"] = statistics.median(times)
        result[f"{name}_times"] = times
        result[f"{name}_step_ms"] = 1e3 * result[f"{name}_s"] / steps
    result["floor_s"] = EPOCH_FLOPS / rates["ceiling"]
    result["floor_step_ms"] = 1e3 * result["floor_s"] / steps
    result["tutorial_over_flax"] = result["tutorial_s"] / result["flax_s"]
    result["tutorial_over_torch"] = result["tutorial_s"] / result["torch_s"]
    result["torch_over_flax"] = result["torch_s"] / result["flax_s"]
    result["flax_over_floor"] = result["flax_s"] / result["floor_s"]
    return result


def time_to_accuracy(backend: str, data: FashionData, device: str, target: float = 0.89, config: Optional[TrainConfig] = None, log=print) -> dict:
    """Training seconds (compilation and evaluation excluded) until the test accuracy first reaches `target`."""
    import importlib

    train = importlib.import_module(f"fashion_{backend}.train")
    pkg = importlib.import_module(f"fashion_{backend}")
    config = config or TrainConfig(device=device)
    dev = pkg.resolve_device(device)
    on_device = train.put_data(data, dev)
    steps = config.steps_per_epoch(len(data.train_labels))
    total = steps * config.epochs
    # Warm-up on a throwaway state with the same shapes, so compilation is not counted.
    warm = train.create_train_state(config, device=dev, total_steps=total)
    warm, _ = train.train_epoch(warm, on_device, batch_order(config.seed + 1, 0, len(data.train_labels), config.batch_size), config, None)  # flax donates the state it is given
    train.evaluate(warm, on_device, config)
    state = train.create_train_state(config, device=dev, total_steps=total)
    seconds, curve = 0.0, []
    for epoch in range(1, config.epochs + 1):
        order = batch_order(config.seed, epoch, len(data.train_labels), config.batch_size)
        start = time.perf_counter()
        state, _ = train.train_epoch(state, on_device, order, config, None)
        seconds += time.perf_counter() - start
        accuracy = train.evaluate(state, on_device, config)["test_accuracy"]
        curve.append({"epoch": epoch, "train_seconds": seconds, "test_accuracy": accuracy})
        log(f"[{backend}] time-to-{100 * target:.0f}%: epoch {epoch} test_acc {100 * accuracy:.2f}% after {seconds:.2f}s of training")
        if accuracy >= target:
            return {"backend": backend, "target": target, "reached": True, "epochs": epoch, "train_seconds": seconds, "curve": curve}
    return {"backend": backend, "target": target, "reached": False, "epochs": config.epochs, "train_seconds": seconds, "curve": curve}


def pick_device(name: str = "auto") -> str:
    """"auto" -> "gpu" when both torch and JAX see one, else "cpu"; "gpu" without one is a DeviceError."""
    import fashion_flax
    import fashion_torch

    if name == "auto":
        return "gpu" if fashion_torch.get_device() == "cuda" and fashion_flax.get_device() == "gpu" else "cpu"
    if name == "gpu":
        fashion_torch.resolve_device("gpu")
        fashion_flax.resolve_device("gpu")
    return name


def set_precision(precision: str) -> None:
    """"fp32" (torch TF32 off, JAX highest) or "tf32" (TF32 in both), the same mode in both twins."""
    set_matmul_precision({"fp32": "highest", "tf32": "tf32"}[precision])


def markdown_time_to_accuracy(rows: List[dict]) -> str:
    lines = ["| twin | target | reached | epochs | training seconds |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['backend']} | {100 * r['target']:.0f}% | {'yes' if r['reached'] else 'no'} | {r['epochs']} | {r['train_seconds']:.2f} |")
    return "\n".join(lines)



def markdown_table(results: List[dict]) -> str:
    """One row per precision mode: epoch seconds and per-step milliseconds of each variant, and the ratios."""
    lines = [
        "| device | precision | tutorial | torch | flax | floor | tutorial/flax | tutorial/torch | torch/flax | flax/floor |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        cell = lambda k: f"{r[k + '_s']:.3f} s ({r[k + '_step_ms']:.2f} ms/step)"
        lines.append(
            f"| {r['device']} | {r['precision']} | {cell('tutorial')} | {cell('torch')} | {cell('flax')} | {cell('floor')} | "
            f"{r['tutorial_over_flax']:.1f}x | {r['tutorial_over_torch']:.1f}x | {r['torch_over_flax']:.2f} | {r['flax_over_floor']:.2f} |"
        )
    return "\n".join(lines)
