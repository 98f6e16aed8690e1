"""Lockstep: torch and a JAX twin from identical weights, fed the identical batch order, step by step.

Like the rest of fashion_compare, it imports both frameworks; the twins themselves never import
each other.
"""

from __future__ import annotations

import time

import numpy as np

from fashion_common.config import TrainConfig, tutorial_config
from fashion_common.data import FashionData, batch_order
from fashion_common.loop import epoch_shifts
from fashion_common.metrics import max_weight_diff
from fashion_common.spec import DEFAULT_SPEC, ModelSpec
from fashion_compare import set_matmul_precision


def lockstep(
    data: FashionData,
    config: TrainConfig | None = None,
    steps: int | None = None,
    weight_every: int = 25,
    precision: str = "highest",
    spec: ModelSpec = DEFAULT_SPEC,
    progress: bool = False,
    keep_states: bool = False,
    engine: str = "auto",
    twin: str = "flax",
) -> dict:
    """Train torch and a JAX twin side by side from the torch twin's init; record how far apart they drift.

    Args:
      data: uint8 Fashion-MNIST arrays (train part used).
      config: default is the tutorial's recipe (plain SGD, lr 1e-3, batch 64) on the CPU.
      engine: the torch engine (fashion_torch.train.ENGINES: autograd eager or compile; cuda_graph
        on CUDA; fused, the hand-written step, only when asked); the flax twin always runs its one engine.
      steps: stop after this many steps (default: one full epoch).
      weight_every: compare every weight each this many steps (and at the last step).
      precision: "highest" (fp32 matmuls, the parity mode) or "tf32".
      keep_states: also return both twins' final train states under "states" ({"torch", "flax"}; not JSON).
      twin: the JAX twin held against torch, "flax" (linen) or "nnx"; its losses are reported as "loss_flax".
    Returns:
      dict with per-step losses of both twins, |loss diff| per step, the max weight diff at
      recorded steps, and the summary figures max_loss_diff and final_weight_diff.
    """
    import importlib

    import fashion_torch
    import fashion_torch.train as torch_train

    fashion_flax = importlib.import_module(f"fashion_{twin}")  # the two JAX twins share train_step's signature
    flax_train = importlib.import_module(f"fashion_{twin}.train")

    config = config or tutorial_config(epochs=1, device="cpu")
    set_matmul_precision(precision)
    order = batch_order(config.seed, 1, len(data.train_labels), config.batch_size)
    order = order[: steps or len(order)]
    total = len(order)
    # config.augment_shift > 0: both twins shift each batch by the same host-drawn offsets (S, B, 2), as the loop does
    shifts = epoch_shifts(config, 1, total)

    t_dev = fashion_torch.resolve_device(config.device)
    f_dev = fashion_flax.resolve_device(config.device)
    t_state = torch_train.create_train_state(config, spec, t_dev, total, engine=engine)
    init = fashion_torch.to_state_dict(t_state.model)  # one init for both twins
    f_state = flax_train.create_train_state(config, spec, f_dev, total, state_dict=init)
    t_data = torch_train.put_data(data, t_dev)
    f_data = flax_train.put_data(data, f_dev)

    import torch

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="lockstep", unit="step", leave=False, dynamic_ncols=True)
    loss_torch, loss_flax, weight_steps, weight_diff = [], [], [0], [0.0]
    start = time.perf_counter()
    t_order = torch.as_tensor(order, dtype=torch.int64, device=t_dev)
    for i in range(total):
        t_shift = None if shifts is None else torch.as_tensor(shifts[i], device=t_dev)
        t_loss, _ = torch_train.train_step(
            t_state, t_data.train_images[t_order[i]], t_data.train_labels[t_order[i]], t_shift
        )
        idx = order[i]
        f_shift = None if shifts is None else shifts[i]
        f_state, (f_loss, _) = flax_train.train_step(
            f_state, f_data.train_images[idx], f_data.train_labels[idx], config.label_smoothing, f_shift
        )
        loss_torch.append(float(t_loss))
        loss_flax.append(float(f_loss))
        if (i + 1) % weight_every == 0 or i + 1 == total:
            weight_steps.append(i + 1)
            weight_diff.append(
                max_weight_diff(
                    fashion_torch.to_state_dict(t_state.model), fashion_flax.to_state_dict(f_state.params, spec)
                )
            )
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    loss_diff = np.abs(np.array(loss_torch) - np.array(loss_flax))
    return {
        "config": config.to_dict(),
        "engine": t_state.engine,
        "twin": twin,
        "precision": precision,
        "steps": total,
        "loss_torch": loss_torch,
        "loss_flax": loss_flax,
        "loss_diff": loss_diff.tolist(),
        "weight_steps": weight_steps,
        "weight_diff": weight_diff,
        "max_loss_diff": float(loss_diff.max()),
        "final_weight_diff": weight_diff[-1],
        "seconds": time.perf_counter() - start,
        **({"states": {"torch": t_state, "flax": f_state}} if keep_states else {}),
    }
