"""Data parallelism, framework-free: world checks, each rank's slice of a global batch, the launch environment.

Both engines (torch DDP, JAX sharding) train on the SAME global batches as one device: every
rank/process draws the whole epoch's order from fashion_common.data.batch_order (same seed, same
order) and takes a contiguous slice of each global batch. With a mean loss per slice and
gradients averaged over equal slices, the update equals the single-device one:
    mean_r( (1/b) sum_{i in slice r} g_i ) = (1/B) sum_i g_i,   b = B / world_size.
"""

from __future__ import annotations

import dataclasses
import os
import socket

import numpy as np

from .errors import FashionTwinsError

# How long a rank waits on a peer (a collective, the rendezvous) before it fails with an error.
# A step here takes milliseconds, so a minute of silence means a dead or stuck peer.
DEFAULT_TIMEOUT_S = 60


class DistributedError(FashionTwinsError, RuntimeError):
    """A data-parallel run that cannot start (bad world size, batch not divisible) or whose peer failed."""


@dataclasses.dataclass(frozen=True)
class World:
    """Where this process sits: rank in [0, size), and its rank on this node (picks the GPU)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes checkpoints, metrics and log lines."""
        return self.rank == 0


def check_world(world_size: int, batch_size: int, what: str = "ranks") -> int:
    """The per-rank batch, B / world_size; a clear error, before any work, when B does not split evenly."""
    if not isinstance(world_size, int) or world_size < 1:
        raise DistributedError(f"the number of {what} must be an int >= 1, got {world_size!r}")
    if batch_size % world_size:
        one = "/".join(word[:-1] for word in what.split("/"))  # "ranks/devices" -> "rank/device"
        raise DistributedError(
            f"global batch_size {batch_size} is not divisible by {world_size} {what}; "
            f"use a multiple of {world_size} (e.g. {max(world_size, batch_size // world_size * world_size)}) so "
            f"every {one} gets an equal slice"
        )
    return batch_size // world_size


def rank_slice(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's contiguous columns of each global batch: (steps, B) -> (steps, B / world_size)."""
    per_rank = check_world(world_size, order.shape[1])
    if not 0 <= rank < world_size:
        raise DistributedError(f"rank {rank} is outside [0, {world_size})")
    return order[:, rank * per_rank : (rank + 1) * per_rank]


def shard_bounds(n: int, rank: int, world_size: int) -> tuple:
    """[start, stop) of this rank's contiguous share of n items (sizes differ by at most one), e.g. the test set."""
    edges = np.linspace(0, n, world_size + 1).round().astype(int)
    return int(edges[rank]), int(edges[rank + 1])


def world_from_env(environ=None) -> World:
    """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK); one process when they are absent."""
    env = os.environ if environ is None else environ
    try:
        world = World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))
    except ValueError as e:
        raise DistributedError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({e})") from None
    if world.size < 1 or not 0 <= world.rank < world.size:
        raise DistributedError(f"RANK={world.rank} is outside WORLD_SIZE={world.size}")
    return world


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for a localhost coordinator or rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def peer_failure_message(rank: int, timeout_s: float, error: BaseException) -> str:
    """One line for a rank (torch) or process (JAX) whose collective failed.

    A peer died, or stayed silent past the timeout.
    """
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (
        f"rank {rank}: a collective with the other ranks failed ({type(error).__name__}: {detail[:200]}); "
        f"a peer process died or was silent for more than {timeout_s:g} s. "
        "The checkpoint on disk is the last completed epoch; rerun with --resume CKPT"
    )


def under_torchrun(environ=None) -> bool:
    """True in a process that torchrun (or a hand-made launch like it) started: RANK and WORLD_SIZE are set."""
    env = os.environ if environ is None else environ
    return "RANK" in env and "WORLD_SIZE" in env


def config_flags(config) -> list:
    """A TrainConfig as `fashion-twins train` flags, for the launches of another process (torchrun, a JAX process)."""
    return [
        arg
        for key, value in config.to_dict().items()
        if value is not None
        for arg in (f"--{key.replace('_', '-')}", str(value))
    ]
