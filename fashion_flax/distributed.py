"""Data-parallel training for the flax twin: one jit over a jax.sharding.Mesh with a `data` axis.

Mirrors fashion_torch/distributed.py. The global batch of indices is sharded on `data`
(NamedSharding(mesh, P(None, 'data')) for an epoch slice (S, B)); params, optimizer state and
the uint8 data set are replicated. The step is the twin's own `train.train_steps` (one lax.scan
of `train._step`), jitted once more with replicated outputs: the batch gathered by sharded
indices comes out sharded, so each device runs the forward and backward on its B / n rows and the
compiler (GSPMD) inserts the all-reduce of the gradients that the mean loss implies. No shard_map
and no hand-written pmean: the sharded program is the single-device program, which is the proof.

The loop mirrors train.train_and_evaluate with the same fashion_common.loop helpers.
Every process draws the same epoch order (fashion_common.data.batch_order); across processes
(`jax.distributed.initialize`) the mesh spans all processes' devices and process 0 writes.
Launched through the CLI (see README), which calls initialize, make_mesh and train_and_evaluate here:

    fashion-twins train --backend flax --devices 4 --batch-size 64 --out m.safetensors   # one process
"""

from __future__ import annotations

import functools
import json
import time

import jax
import numpy as np
from jax._src import distributed as jax_distributed  # its client's key-value store, as multihost_utils uses it
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fashion_common import distributed as common
from fashion_common import interrupt, loop
from fashion_common.config import TrainConfig
from fashion_common.data import FashionData
from fashion_common.distributed import DEFAULT_TIMEOUT_S, DistributedError, World
from fashion_common.spec import DEFAULT_SPEC, ModelSpec

from . import train
from .model import get_device, set_matmul_precision

BACKEND = "flax"  # checkpoints are the single-device twin's: either resumes the other's
AXIS = "data"
# jax.distributed.initialize's own deadline is the --timeout plus this, so that common.exit_after's one line
# comes first: past its deadline JAX aborts the process with a fatal log (DEADLINE_EXCEEDED in RegisterTask).
# In fashion_common.distributed, whose MAX_TIMEOUT_S leaves room for it under JAX's int32 seconds.
JOIN_MARGIN_S = common.JOIN_MARGIN_S
WORLD_KEY = "fashion_twins/world/"  # each process's facts, under its index, in the coordinator's key-value store


# ----------------------------------------------------------------------------- processes and the mesh


def initialize(
    coordinator_address: str | None = None,
    num_processes: int = 1,
    process_id: int = 0,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> World:
    """Join a multi-process run (no-op for one process); CPU collectives go through gloo.

    `timeout_s` is both the initialization timeout (a process that never arrives) and the
    heartbeat timeout (a process that dies mid-run: the coordination service then fails the others).
    """
    timeout_s = common.check_timeout(timeout_s)  # the bound torch's init_process_group applies too
    if num_processes > 1 and not jax.distributed.is_initialized():
        if process_id == 0:  # the coordinator's port: one line here rather than a crash in the bind
            common.check_port_free(coordinator_address)
        # CPU devices of different processes can only all-reduce through a collectives library.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        # A coordinator that never comes (not started, a taken port, another --num-processes) is a wait in C++
        # that JAX ends by aborting the process: this process's one line comes at --timeout instead.
        who = f"process {process_id}"
        watchdog = common.exit_after(
            timeout_s, common.join_timeout_message(who, coordinator_address, num_processes, timeout_s)
        )
        try:
            jax.distributed.initialize(
                coordinator_address,
                num_processes,
                process_id,
                initialization_timeout=int(timeout_s) + JOIN_MARGIN_S,
                heartbeat_timeout_seconds=int(timeout_s),
            )
        except jax.errors.JaxRuntimeError as e:  # e.g. the port taken after check_port_free ("Failed to start RPC")
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DistributedError(f"{who}: could not join the coordinator at {coordinator_address}: {detail}") from e
        finally:
            watchdog.cancel()
    return World(jax.process_index(), jax.process_count(), 0)


def agree_on_world(
    backend: str,
    config: TrainConfig,
    data: FashionData,
    resume=None,
    init_from=None,
    timeout_s=DEFAULT_TIMEOUT_S,
    **more,
) -> None:
    """Every process publishes its facts (common.world_facts); each compares all of them before the first step.

    Through the coordinator's key-value store, not a collective: processes that disagree (another
    --num-processes, config, data or checkpoint) may not be able to run one program together. On a
    difference every process shuts the runtime down cleanly (all reach that point) and raises one
    DistributedError naming it; a process that never publishes makes the others raise within `timeout_s`.
    `more`: further facts, e.g. versions={...}. No-op for one process. Any JAX twin can call it (backend "nnx" too).
    """
    if not jax.distributed.is_initialized():
        return
    state = jax_distributed.global_state  # num_processes: the --num-processes this process was given
    facts = common.world_facts(backend, "--num-processes", state.num_processes, config, data, resume, init_from, **more)
    client, me = state.client, jax.process_index()
    timeout_ms = int(timeout_s * 1000)
    try:
        client.key_value_set(f"{WORLD_KEY}{me}", json.dumps({"facts": facts, "sha256": common.facts_digest(facts)}))
        client.wait_at_barrier("fashion_twins/world_published", timeout_ms)  # every process of the run has published
        published = sorted(
            (int(key.rpartition("/")[2]), json.loads(value)) for key, value in client.key_value_dir_get(WORLD_KEY)
        )
        client.wait_at_barrier("fashion_twins/world_read", timeout_ms)  # nobody leaves while another still reads
    except jax.errors.JaxRuntimeError as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]  # its first sentence
        raise DistributedError(
            f"process {me}: not every process reached the check of the run's world within {timeout_s:g} s "
            f"(--timeout; {detail[:200]}); a peer stopped before its first step: see its own error"
        ) from e
    if len({entry["sha256"] for _, entry in published}) == 1:
        return
    message = common.world_disagreement([entry["facts"] for _, entry in published], "process")
    shutdown()  # every process found the same difference and comes here: a clean exit, nobody waits on a dead peer
    raise DistributedError(message)


def make_mesh(num_devices: int | None = None, platform: str | None = None) -> Mesh:
    """A 1-D mesh ('data',) over the first `num_devices` devices of the platform (default: all, every process)."""
    devices = jax.devices(platform)
    if num_devices is not None:
        if jax.process_count() > 1 and num_devices != len(devices):
            raise DistributedError(
                f"--devices {num_devices}: a multi-process run uses all {len(devices)} devices of its processes"
            )
        if not 1 <= num_devices <= len(devices):
            raise DistributedError(f"--devices {num_devices}: JAX sees {len(devices)} {devices[0].platform} device(s)")
        devices = devices[:num_devices]
    return Mesh(np.array(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """(S, B) rows of global batches: the B columns split over `data`, contiguous per device, as torch's rank_slice."""
    return NamedSharding(mesh, P(None, AXIS))


def put_global(array, sharding: NamedSharding) -> jax.Array:
    """A host array that every process holds whole -> a global jax.Array; each device takes its part."""
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def replicate(tree, mesh: Mesh):
    """Every array leaf replicated on the mesh (through the host, so it works across processes); Python scalars stay."""
    host = jax.device_get(tree)
    return jax.tree_util.tree_map(lambda x: x if isinstance(x, (int, float)) else put_global(x, replicated(mesh)), host)


# ----------------------------------------------------------------------------- state


def create_train_state(
    config: TrainConfig, spec: ModelSpec = DEFAULT_SPEC, mesh: Mesh = None, total_steps: int = 1, state_dict=None
) -> train.TrainState:
    """The twin's fresh state (same seed on every process, so the same init), replicated on the mesh."""
    local = (
        mesh.devices.flat[0] if mesh.devices.flat[0].process_index == jax.process_index() else jax.local_devices()[0]
    )
    return replicate(train.create_train_state(config, spec, local, total_steps, state_dict), mesh)


def put_data(data: FashionData, mesh: Mesh) -> train.DeviceData:
    """The whole uint8 set replicated on every device (47 MB): a step gathers its rows by sharded index."""

    def put(a, dtype):
        return put_global(np.ascontiguousarray(a, dtype=dtype), replicated(mesh))

    return train.DeviceData(
        put(data.train_images, np.uint8),
        put(data.train_labels, np.int32),
        put(data.test_images, np.uint8),
        put(data.test_labels, np.int32),
    )


# ----------------------------------------------------------------------------- the steps


@functools.lru_cache(maxsize=8)
def sharded_train_steps(mesh: Mesh):
    """train.train_steps, jitted with every output replicated on the mesh: (state, images, labels, order) as there.

    Inputs carry their shardings (state, images, labels replicated; order sharded on `data`);
    pinning the outputs keeps params and optimizer state replicated from one slice to the next.
    """
    return jax.jit(
        train.train_steps, static_argnames="label_smoothing", donate_argnums=0, out_shardings=replicated(mesh)
    )


def train_epoch(
    state: train.TrainState, data: train.DeviceData, order: np.ndarray, config: TrainConfig, progress=None, shifts=None
):
    """One pass over the GLOBAL `order` (steps, B), its columns sharded over the mesh -> (state, metrics).

    shifts: optional GLOBAL (steps, B, 2) offsets, sharded on B like `order`.
    The loss and correct count come out of the one program already global (the mean is over the whole batch).
    """
    mesh = data.train_images.sharding.mesh
    common.check_world(mesh.size, order.shape[1], "devices")
    step_fn = sharded_train_steps(mesh)
    loss_sum, correct_sum, seen = 0.0, 0, 0
    for chunk in loop.progress_chunks(len(order), progress):
        interrupt.check()  # Ctrl-C stops here, between compiled scans, never inside one
        order_d = put_global(order[chunk], batch_sharded(mesh))  # (S, B), B split over `data`
        shifts_d = (
            None if shifts is None else put_global(shifts[chunk], batch_sharded(mesh))
        )  # (S, B, 2), the same split
        state, chunk_loss, chunk_correct = step_fn(
            state,
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
    steps = len(order)
    return state, {"train_loss": loss_sum / steps, "train_accuracy": correct_sum / (steps * order.shape[1])}


def evaluate(state: train.TrainState, data: train.DeviceData, config: TrainConfig) -> dict[str, float]:
    """The twin's evaluation on the replicated test set (every device computes it; the test set is small)."""
    return train.evaluate(state, data, config)


# ----------------------------------------------------------------------------- checkpoints


def load_train_state(state: train.TrainState, path) -> train.TrainState:
    """The twin's load on one local device (it places arrays on the params' device), then replicated again."""
    mesh = jax.tree_util.tree_leaves(state.params)[0].sharding.mesh
    local = jax.device_put(jax.device_get(state), jax.local_devices()[0])
    return replicate(train.load_train_state(local, path), mesh)


# ----------------------------------------------------------------------------- the loop


def device_name(mesh: Mesh) -> str:
    kinds = sorted({d.device_kind if d.platform != "cpu" else "cpu" for d in mesh.devices.flat})
    simulated = (
        " (simulated host devices)"
        if mesh.devices.flat[0].platform == "cpu" and mesh.size > jax.process_count()
        else ""
    )
    return f"{'/'.join(kinds)} x {mesh.size} devices over {jax.process_count()} process(es){simulated}"


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


def config_platform(config: TrainConfig) -> str:
    """The platform config.device names: "cpu" or "gpu" ("auto": a GPU if JAX has one)."""
    return get_device() if config.device == "auto" else config.device


def _silent(line: str) -> None:
    """Processes other than 0 log nothing: the metrics are global already."""


def is_initialized() -> bool:
    """True once this process joined a multi-process run.

    A failure then must leave with os._exit (a peer may never come).
    """
    return jax.distributed.is_initialized()


def shutdown() -> None:
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()
