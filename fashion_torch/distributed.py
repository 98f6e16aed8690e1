"""Data-parallel training for the torch twin: DistributedDataParallel under torchrun (NCCL on CUDA, gloo on CPU).

Mirrors fashion_flax/distributed.py. Every rank draws the same epoch order
(fashion_common.data.batch_order) and trains on its contiguous slice of each global batch
(fashion_common.distributed.rank_slice), never a DistributedSampler's reshuffle; DDP averages the
gradients of the per-slice mean losses, so each update is the single-device update on the whole
global batch. The epoch loop, log lines, metrics JSON and checkpoints are fashion_common.loop's;
only rank 0 writes. Launched through the CLI (see README), which calls train_and_evaluate here:

    torchrun --standalone --nproc-per-node 2 -m fashion_twins train --backend torch --batch-size 64 --out m.safetensors
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from fashion_common import distributed as common
from fashion_common import loop
from fashion_common.config import TrainConfig
from fashion_common.data import FashionData
from fashion_common.distributed import DEFAULT_TIMEOUT_S, DistributedError, World
from fashion_common.errors import ConfigError, FashionTwinsError
from fashion_common.spec import DEFAULT_SPEC, ModelSpec

from . import train
from .model import resolve_device, set_matmul_precision

BACKEND = "torch"  # checkpoints are the single-device twin's: either resumes the other's


@dataclasses.dataclass
class DDPTrainState(train.TrainState):
    """The twin's TrainState (plain model: what is saved) plus its DDP wrapper (what trains) and the world."""

    ddp: DistributedDataParallel | None = None
    world: World = World()


# ----------------------------------------------------------------------------- the process group


def init_process_group(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """Join the torchrun world (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT): NCCL on CUDA, gloo on CPU.

    `timeout_s` bounds every collective: a peer that dies or hangs makes this rank raise within it
    (gloo raises at once when the peer's socket closes; NCCL's watchdog aborts after the timeout).
    Outside torchrun (no RANK) this is a world of one on a free localhost port.
    """
    timeout_s = common.check_timeout(timeout_s)  # the bound flax's initialize applies too
    world = common.world_from_env()
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ and world.size == 1:
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(common.free_port()))
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, rank=world.rank, world_size=world.size, timeout=datetime.timedelta(seconds=timeout_s)
        )
    return world


def agree_on_world(backend: str, config: TrainConfig, data: FashionData, resume=None, init_from=None, **more) -> None:
    """Every rank's facts (common.world_facts) gathered on every rank and compared before the first step.

    `more`: further facts, e.g. versions={...}. A difference (another WORLD_SIZE, flag, data set, seed or
    checkpoint) raises one DistributedError naming it, on every rank alike; a rank that never comes makes
    the gather fail within the process group's timeout. No-op outside a process group.
    """
    if not dist.is_initialized():
        return
    facts = common.world_facts(
        backend, "WORLD_SIZE", common.world_from_env().size, config, data, resume, init_from, **more
    )
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (common.facts_digest(facts), facts))  # gloo: pickled bytes; NCCL: via this GPU
    if len({digest for digest, _ in gathered}) > 1:
        raise DistributedError(common.world_disagreement([facts for _, facts in gathered], "rank"))


def rank_device(config: TrainConfig, world: World) -> torch.device:
    """The config's device; on CUDA, the GPU of this rank's LOCAL_RANK."""
    device = resolve_device(config.device)
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    return device


def _world() -> World:
    if not dist.is_initialized():
        return World()
    return World(dist.get_rank(), dist.get_world_size(), common.world_from_env().local_rank)


# ----------------------------------------------------------------------------- state


def create_train_state(
    config: TrainConfig,
    spec: ModelSpec = DEFAULT_SPEC,
    device=None,
    total_steps: int = 1,
    state_dict=None,
    engine: str = "auto",
) -> DDPTrainState:
    """The twin's fresh state (same seed on every rank, so the same init), with the model wrapped in DDP."""
    base = train.create_train_state(config, spec, device, total_steps, state_dict, engine)
    if base.engine == "fused":
        raise ConfigError(
            "engine fused (the hand-written backward) is single-device only; DDP all-reduces autograd's gradients: "
            "use eager or compile"
        )
    # device_ids: the one GPU of this rank; None on CPU. DDP also broadcasts rank 0's weights here.
    param_device = next(base.model.parameters()).device
    device_ids = [param_device.index] if param_device.type == "cuda" else None
    ddp = DistributedDataParallel(base.model, device_ids=device_ids)
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(train.TrainState)}
    # The forward goes through DDP, so loss.backward() all-reduces each gradient bucket to the mean
    # over ranks before optimizer.step(): the twin's own train_step then is the data-parallel step.
    fields["model_loss"] = train.make_model_loss(ddp, config, base.engine)
    return DDPTrainState(**fields, ddp=ddp, world=_world())


# ----------------------------------------------------------------------------- one epoch


def _all_reduce_sum(values, device) -> list:
    """Sum a few host numbers over all ranks (float64, on the collective's device: NCCL needs CUDA)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def train_epoch(
    state: DDPTrainState, data: train.DeviceData, order: np.ndarray, config: TrainConfig, progress=None, shifts=None
):
    """One pass over the GLOBAL `order` (steps, B), this rank on its columns -> (state, metrics over all ranks).

    The twin's own train_epoch on this rank's slices: the state's model_loss runs through DDP, so
    each backward() all-reduces the gradients. shifts: optional GLOBAL (steps, B, 2) offsets
    (fashion_common.augment), sliced by the same columns as `order`.
    """
    world = state.world
    local = common.rank_slice(order, world.rank, world.size)  # (steps, B / world)
    local_shifts = (
        None if shifts is None else common.rank_slice(shifts, world.rank, world.size)
    )  # (steps, B / world, 2)
    state.ddp.train()  # the wrapper's own mode; train_epoch sets the wrapped model's
    state, metrics = train.train_epoch(state, data, local, config, progress, local_shifts)
    # Equal slices: the global mean loss and accuracy are the means of the ranks' own.
    loss_sum, accuracy_sum = _all_reduce_sum(
        [metrics["train_loss"], metrics["train_accuracy"]], data.train_images.device
    )
    return state, {"train_loss": loss_sum / world.size, "train_accuracy": accuracy_sum / world.size}


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(state: DDPTrainState, data: train.DeviceData, config: TrainConfig) -> dict[str, float]:
    """The test set split in contiguous shards, one per rank; loss and correct sums all-reduced."""
    world, n = state.world, len(data.test_labels)
    start, stop = common.shard_bounds(n, world.rank, world.size)
    sums = [0.0, 0.0]
    if stop > start:
        m = train.evaluate_model(
            state.model, data.test_images[start:stop], data.test_labels[start:stop], config.eval_batch_size
        )
        sums = [m["test_loss"] * (stop - start), m["test_accuracy"] * (stop - start)]
    loss_sum, correct = _all_reduce_sum(sums, data.test_images.device)
    return {"test_loss": loss_sum / n, "test_accuracy": round(correct) / n}


# ----------------------------------------------------------------------------- the loop


def device_name(device) -> str:
    world = _world()
    backend = dist.get_backend() if dist.is_initialized() else "none"
    return f"{train.device_name(device)} x {world.size} ranks (DDP, {backend})"


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
    engine: str = "auto",
    timeout_s: float = DEFAULT_TIMEOUT_S,
):
    """train.train_and_evaluate data-parallel over the torchrun world: this module's epoch and evaluate, rank 0 writes.

    Raises DistributedError before any work when config.batch_size does not split over the ranks,
    and when a peer rank dies or is silent past `timeout_s` (the checkpoint stays the last good one).
    Returns (state, metrics); the metrics are the same on every rank, only rank 0 writes them.
    """
    world = common.world_from_env()
    common.check_world(world.size, config.batch_size, "ranks")  # before the rendezvous: every rank fails alike
    device = rank_device(config, world)
    init_process_group(device, timeout_s)
    if not world.is_writer:  # the other ranks train and reduce metrics, but write and log nothing
        out, metrics_path, quiet, log, on_epoch = None, None, True, _silent, None
    try:
        # the same size, flags, data, seed and checkpoint on every rank, or all stop here in one line
        agree_on_world(BACKEND, config, data, resume, init_from, engine=engine, versions=train.versions())
        # process-wide, as each framework keeps it: every twin trains at config.precision (highest by default), so
        # twins trained by default train alike on every device (JAX's GPU default alone would be TF32-like)
        set_matmul_precision(config.precision)
        run = loop.prepare(config, data, out, metrics_path)
        state = create_train_state(config, spec, device, run.total_steps, loop.init_weights(init_from, spec), engine)
        train_data = train.put_data(run.data, device)
        val_data = None if run.val is None else train.put_data(run.val, device)
        history, first_epoch = [], 1
        if resume is not None:  # every rank reads it: the twin's own load (the plain model under the DDP wrapper)
            history, first_epoch, run = loop.resume_point(resume, BACKEND, config, run, *train.resume_layout(state))
            state = train.load_train_state(state, resume)
        metrics = loop.run_metrics(BACKEND, device_name(device), train.versions(), config, spec, run, history)
        metrics["engine"] = state.engine

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
            if out is not None:  # rank 0 saves the plain model, not the DDP wrapper
                train.save_train_state(state, out, counters)
            loop.write_metrics(metrics_path, metrics)
            log(loop.epoch_line(BACKEND, epoch, config.epochs, row))
            if on_epoch is not None:  # e.g. fashion_common.tensorboard.EpochWriter
                on_epoch(counters)
        return state, metrics
    except RuntimeError as e:
        if isinstance(e, FashionTwinsError) or not _is_collective_failure(e):
            raise
        raise DistributedError(common.peer_failure_message(world.rank, timeout_s, e)) from e


def _is_collective_failure(error: RuntimeError) -> bool:
    """torch's DistError family, or a RuntimeError that gloo/NCCL raised.

    Their older messages are plain RuntimeErrors.
    """
    text = str(error).lower()
    return isinstance(error, dist.DistError) or any(
        word in text for word in ("gloo", "nccl", "connection", "timed out", "timeout")
    )


def _silent(line: str) -> None:
    """Ranks other than 0 log nothing: rank 0's lines already hold the reduced metrics."""


def is_initialized() -> bool:
    """True once this process joined the process group.

    A failure then must leave with os._exit (a peer may never come).
    """
    return dist.is_initialized()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- module entry point
