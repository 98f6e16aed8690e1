"""Data-parallel training for the NNX twin: one jit over a jax.sharding.Mesh with a `data` axis.

Mirrors fashion_flax/distributed.py (and fashion_torch/distributed.py) function for function. As
Flax's "Scale up on multiple devices" guide does it for NNX: the model and optimizer State is
replicated on the mesh (`nnx.state` -> replicated arrays -> `nnx.update`), the global batch of
indices is sharded on `data` (NamedSharding(mesh, P(None, 'data')) for an epoch slice (S, B)), and
the twin's own single-device program runs on them: `train._scan_steps` (one lax.scan of
`train._step` over the split state), jitted once more with replicated outputs. The batch gathered
by sharded indices comes out sharded, so each device runs the forward and backward on its B / n
rows and the compiler (GSPMD) inserts the all-reduce of the gradients that the mean loss implies.
No shard_map, no hand-written pmean, no sharding annotations on the model (data parallel replicates
every Variable): the sharded program is the single-device program, which is the proof.

The mesh, the processes, the data placement and the device name are the linen twin's JAX-level
helpers (one framework family, one copy); the state, the epoch and the checkpoint load are NNX's.
The loop mirrors train.train_and_evaluate with the same fashion_common.loop helpers. Every process
draws the same epoch order; across processes (`jax.distributed.initialize`) the mesh spans all
processes' devices and process 0 writes. Launched through the CLI (see README):

    fashion-twins train --backend nnx --devices 4 --batch-size 64 --out m.safetensors   # one process
"""

from __future__ import annotations

import functools
import time

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from fashion_common import distributed as common
from fashion_common import interrupt, loop
from fashion_common.config import TrainConfig
from fashion_common.data import FashionData
from fashion_common.distributed import DEFAULT_TIMEOUT_S, DistributedError
from fashion_common.spec import DEFAULT_SPEC, ModelSpec
from fashion_flax.distributed import (  # the JAX-level pieces both Flax twins share, one copy
    AXIS,
    agree_on_world,
    batch_sharded,
    config_platform,
    device_name,
    initialize,
    is_initialized,
    make_mesh,
    put_data,
    put_global,
    replicate,
    replicated,
    shutdown,
)

from . import train
from .model import set_matmul_precision

__all__ = [  # the linen twin's, re-exported so that this module has the same public names
    "AXIS",
    "batch_sharded",
    "config_platform",
    "device_name",
    "initialize",
    "is_initialized",
    "make_mesh",
    "put_data",
    "put_global",
    "replicate",
    "replicated",
    "shutdown",
]

BACKEND = "nnx"  # checkpoints are the single-device twin's: either resumes the other's


# ----------------------------------------------------------------------------- state


def create_train_state(
    config: TrainConfig, spec: ModelSpec = DEFAULT_SPEC, mesh: Mesh = None, total_steps: int = 1, state_dict=None
) -> train.TrainState:
    """The twin's fresh state (same seed on every process, so the same init), its arrays replicated on the mesh."""
    local = (
        mesh.devices.flat[0] if mesh.devices.flat[0].process_index == jax.process_index() else jax.local_devices()[0]
    )
    state = train.create_train_state(config, spec, local, total_steps, state_dict)
    nnx.update(state, replicate(nnx.state(state), mesh))  # the model and optimizer Variables, in place
    return state


# ----------------------------------------------------------------------------- the steps


@functools.lru_cache(maxsize=8)
def sharded_train_steps(mesh: Mesh):
    """train._scan_steps, jitted with every output replicated on the mesh: (graphdef, arrays, images, labels, order).

    Inputs carry their shardings (arrays, images, labels replicated; order sharded on `data`);
    pinning the outputs keeps params and optimizer state replicated from one slice to the next.
    """
    return jax.jit(
        train._scan_steps,
        static_argnames=("graphdef", "label_smoothing"),
        donate_argnames="arrays",
        out_shardings=replicated(mesh),
    )


def train_epoch(
    state: train.TrainState, data: train.DeviceData, order: np.ndarray, config: TrainConfig, progress=None, shifts=None
):
    """One pass over the GLOBAL `order` (steps, B), its columns sharded over the mesh -> (state, metrics).

    shifts: optional GLOBAL (steps, B, 2) offsets, sharded on B like `order`.
    As the single-device epoch, the state is split once and written back once at the end.
    The loss and correct count come out of the one program already global (the mean is over the whole batch).
    """
    mesh = data.train_images.sharding.mesh
    common.check_world(mesh.size, order.shape[1], "devices")
    step_fn = sharded_train_steps(mesh)
    graphdef, arrays = nnx.split(state)  # replicated arrays: the model's params and the optimizer's state
    loss_sum, correct_sum, seen = 0.0, 0, 0
    for chunk in loop.progress_chunks(len(order), progress):
        interrupt.check()  # Ctrl-C stops here, between compiled scans, never inside one
        order_d = put_global(order[chunk], batch_sharded(mesh))  # (S, B), B split over `data`
        shifts_d = (
            None if shifts is None else put_global(shifts[chunk], batch_sharded(mesh))
        )  # (S, B, 2), the same split
        arrays, chunk_loss, chunk_correct = step_fn(
            graphdef,
            arrays,
            data.train_images,
            data.train_labels,
            order_d,
            label_smoothing=config.label_smoothing,
            shifts=shifts_d,
        )
        loss_sum, correct_sum = loss_sum + float(chunk_loss), correct_sum + int(chunk_correct)
        seen += chunk.stop - chunk.start
        if progress is not None:
            progress.update(chunk.stop - chunk.start)
    nnx.update(state, arrays)
    steps = len(order)
    return state, {"train_loss": loss_sum / steps, "train_accuracy": correct_sum / (steps * order.shape[1])}


def evaluate(state: train.TrainState, data: train.DeviceData, config: TrainConfig) -> dict[str, float]:
    """The twin's evaluation on the replicated test set (every device computes it; the test set is small)."""
    return train.evaluate(state, data, config)


# ----------------------------------------------------------------------------- checkpoints


def load_train_state(state: train.TrainState, path) -> train.TrainState:
    """The twin's load on one local device (it places arrays on the params' device), then replicated again."""
    mesh = jax.tree_util.tree_leaves(state.params)[0].sharding.mesh
    nnx.update(state, jax.device_put(jax.device_get(nnx.state(state)), jax.local_devices()[0]))
    state = train.load_train_state(state, path)
    nnx.update(state, replicate(nnx.state(state), mesh))
    return state


# ----------------------------------------------------------------------------- the loop


def train_and_evaluate(
    config: TrainConfig,
    data: FashionData,
    spec: ModelSpec = DEFAULT_SPEC,
    out=None,
    metrics_path=None,
    resume=None,
    quiet: bool = False,
    log=print,
    init_from=None,
    on_epoch=None,
    mesh: Mesh | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
):
    """train.train_and_evaluate data-parallel over `mesh` (default: every device of config.device's platform).

    This module's state, data, epoch and evaluate; process 0 writes the checkpoint and metrics.
    Raises DistributedError before any work when config.batch_size does not split over the mesh, and
    when a peer process dies (the checkpoint stays the last good one); `timeout_s` is only named in that message.
    Returns (state, metrics).
    """
    if mesh is None:
        mesh = make_mesh(platform=config_platform(config))
    common.check_world(mesh.size, config.batch_size, "devices")
    if jax.process_index() != 0:  # the other processes train, but write and log nothing
        out, metrics_path, quiet, log, on_epoch = None, None, True, _silent, None
    try:
        # the same size, flags, data, seed and checkpoint on every process, or all stop here in one line
        agree_on_world(BACKEND, config, data, resume, init_from, timeout_s, versions=train.versions())
        # process-wide, as each framework keeps it: every twin trains at config.precision (highest by default), so
        # twins trained by default train alike on every device (JAX's GPU default alone would be TF32-like)
        set_matmul_precision(config.precision)
        run = loop.prepare(config, data, out, metrics_path)
        state = create_train_state(config, spec, mesh, run.total_steps, loop.init_weights(init_from, spec))
        train_data = put_data(run.data, mesh)
        val_data = None if run.val is None else put_data(run.val, mesh)
        history, first_epoch = [], 1
        if resume is not None:  # every process reads it
            history, first_epoch, run = loop.resume_point(resume, BACKEND, config, run, *train.resume_layout(state))
            state = load_train_state(state, resume)
        metrics = loop.run_metrics(BACKEND, device_name(mesh), train.versions(), config, spec, run, history)
        metrics["engine"] = "jit_scan"

        for epoch in range(first_epoch, config.epochs + 1):
            order, shifts = loop.epoch_batches(config, epoch, run)  # GLOBAL (steps, B) and (steps, B, 2) or None
            progress = loop.progress_bar(BACKEND, epoch, config.epochs, run.steps_per_epoch, quiet)
            start = time.perf_counter()
            state, train_metrics = train_epoch(state, train_data, order, config, progress, shifts)
            seconds = time.perf_counter() - start
            if progress is not None:
                progress.close()
            test_metrics = evaluate(state, train_data, config)
            val_metrics = None if val_data is None else evaluate(state, val_data, config)
            row = loop.epoch_row(epoch, seconds, train_metrics, test_metrics, val_metrics, run)
            history.append(row)
            counters = loop.counters(BACKEND, epoch, run, config, history)
            if out is not None:  # the twin's save fetches the replicated arrays to the host
                train.save_train_state(state, out, counters)
            loop.write_metrics(metrics_path, metrics)
            log(loop.epoch_line(BACKEND, epoch, config.epochs, row))
            if on_epoch is not None:  # e.g. fashion_common.tensorboard.EpochWriter
                on_epoch(counters)
        return state, metrics
    except jax.errors.JaxRuntimeError as e:
        if jax.process_count() == 1:  # one process: not a peer's failure, keep XLA's own error
            raise
        # a dead peer: gloo sees its socket close at once; a silent one is caught by the heartbeat timeout
        raise DistributedError(common.peer_failure_message(jax.process_index(), timeout_s, e)) from e


def _silent(line: str) -> None:
    """Processes other than 0 log nothing: the metrics are global already."""
