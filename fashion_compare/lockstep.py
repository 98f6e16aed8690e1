"""Lockstep: both twins from identical weights, fed the identical batch order, step by step.

Like the rest of fashion_compare, it imports both frameworks; the twins themselves never import
each other.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from fashion_common.config import TrainConfig, tutorial_config
from fashion_common.data import FashionData, batch_order
from fashion_common.loop import epoch_shifts
from fashion_common.metrics import max_weight_diff
from fashion_common.spec import DEFAULT_SPEC, ModelSpec, checkpoint_keys, flax_param_path
from fashion_compare import set_matmul_precision


def torch_weights64(model) -> dict:
    """The torch twin's weights as canonical float64 numpy arrays (to_state_dict would round them to float32)."""
    return {k: v.detach().cpu().double().numpy() for k, v in model.state_dict().items()}


def flax_weights64(params, spec: ModelSpec = DEFAULT_SPEC) -> dict:
    """The flax twin's params as canonical float64 numpy arrays, weight [out, in] (kernel transposed)."""
    tree = params.get("params", params)
    out = {}
    for key in checkpoint_keys(spec):
        leaf = tree
        for name in flax_param_path(key):
            leaf = leaf[name]
        value = np.asarray(leaf, dtype=np.float64)
        out[key] = value.T if key.endswith(".weight") else value
    return out


def _to_float64(t_state, f_state):
    """Both twins' weights and optimizer state in float64 (jax x64 on): torch .double(), flax cast + new opt_state."""
    import jax
    import jax.numpy as jnp

    t_state.model.double()  # in place: the optimizer keeps the same Parameter objects
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), f_state.params)
    return f_state.replace(params=params, opt_state=f_state.tx.init(params))


def lockstep(
    data: FashionData,
    config: TrainConfig | None = None,
    steps: int | None = None,
    weight_every: int = 25,
    precision: str = "highest",
    spec: ModelSpec = DEFAULT_SPEC,
    progress: bool = False,
    keep_states: bool = False,
    dtype: str = "float32",
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
      dtype: "float32" (the twins as they train) or "float64": both twins' weights, optimizer state and
        arithmetic in float64 (JAX's x64 switched on for this call), where rounding (~1e-16) cannot flip
        a ReLU input across 0, so the twins must agree to ~1e-12: the algorithm, not the rounding, is compared.
        (float64 is run with the linen twin.)
      twin: the JAX twin held against torch, "flax" (linen) or "nnx"; its losses are reported as "loss_flax".
    Returns:
      dict with per-step losses of both twins, |loss diff| per step, the max weight diff at
      recorded steps, and the summary figures max_loss_diff and final_weight_diff.
    """
    import jax

    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, not {dtype!r}")
    if dtype == "float64" and twin != "flax":
        raise ValueError(f"dtype float64 is run with the linen twin (twin='flax'), not {twin!r}")
    with jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext():
        return _lockstep(data, config, steps, weight_every, precision, spec, progress, keep_states, dtype, engine, twin)


def _lockstep(data, config, steps, weight_every, precision, spec, progress, keep_states, dtype, engine, twin) -> dict:
    """lockstep's body, run inside jax's x64 switch when dtype is float64."""
    import importlib

    fashion_flax = importlib.import_module(f"fashion_{twin}")  # the two JAX twins share train_step's signature
    flax_train = importlib.import_module(f"fashion_{twin}.train")
    import fashion_torch
    import fashion_torch.train as torch_train

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
    if dtype == "float64":
        f_state = _to_float64(t_state, f_state)
        t_weights, f_weights = torch_weights64, flax_weights64
    else:
        t_weights, f_weights = fashion_torch.to_state_dict, fashion_flax.to_state_dict
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
            weight_diff.append(max_weight_diff(t_weights(t_state.model), f_weights(f_state.params, spec)))
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
        "dtype": dtype,
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
