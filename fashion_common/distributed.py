"""Data parallelism, framework-free: world checks, each rank's slice of a global batch, the launch environment.

Both engines (torch DDP, JAX sharding) train on the SAME global batches as one device: every
rank/process draws the whole epoch's order from fashion_common.data.batch_order (same seed, same
order) and takes a contiguous slice of each global batch. With a mean loss per slice and
gradients averaged over equal slices, the update equals the single-device one:
    mean_r( (1/b) sum_{i in slice r} g_i ) = (1/B) sum_i g_i,   b = B / world_size.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import socket
import sys
import threading

import numpy as np

from .checkpoint import read_train_state
from .data import file_sha256
from .errors import FashionTwinsError

# How long a rank waits on a peer (a collective, the rendezvous) before it fails with an error.
# A step here takes milliseconds, so a minute of silence means a dead or stuck peer.
DEFAULT_TIMEOUT_S = 60
# jax.distributed.initialize's own deadline is the --timeout plus this (fashion_flax.distributed.initialize).
JOIN_MARGIN_S = 30
# The --timeout every consumer takes, in every twin and launcher. torch's c10d waits on its sockets with
# poll(), whose timeout is int32 milliseconds: past 2**31 - 1 ms (24.8 days) the wait wraps, and rank 0
# logs "poll ... returned 0, likely a timeout" in a loop; at 1e10 s its int64 nanoseconds overflow too,
# an instant DistNetworkError. jax.distributed takes int32 seconds, and a heartbeat of int(0.5) = 0 s
# fails at once. So from 1 s to the int32 milliseconds, for every twin alike.
MIN_TIMEOUT_S = 1
MAX_TIMEOUT_S = (2**31 - 1) // 1000  # 2,147,483 s


def check_timeout(timeout_s) -> float:
    """The --timeout as a float, or DistributedError naming the flag: a finite number in MIN..MAX_TIMEOUT_S."""
    ok = isinstance(timeout_s, (int, float)) and not isinstance(timeout_s, bool)
    if not ok or not MIN_TIMEOUT_S <= timeout_s <= MAX_TIMEOUT_S:  # NaN fails both comparisons
        raise DistributedError(
            f"argument --timeout: must be a number of seconds in {MIN_TIMEOUT_S}..{MAX_TIMEOUT_S} (what "
            f"jax.distributed and torch's c10d both take), got {timeout_s!r}"
        )
    return float(timeout_s)


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


def check_port_free(address: str, flag: str = "--coordinator") -> None:
    """Refuse, in one line, a coordinator port that something on this machine already listens on.

    JAX's coordinator (process 0) binds [::]:PORT, all interfaces; binding a taken port crashes it
    (an XLA log line, then SIGSEGV or an uncatchable error) and its peers abort. This probe binds the same
    way first. It is a check, not a reservation: a program that takes the port between this probe and
    the coordinator's own bind (milliseconds later) still wins that race, and then JAX's error is
    turned into a DistributedError where it raises one.
    """
    port = int(address.rpartition(":")[2])
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 on this machine: the IPv4 probe
            continue
        with probe:
            # SO_REUSEADDR as a server sets it: a port left in TIME_WAIT by an earlier run is free, a listener is not
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as e:
                if e.errno in (errno.EADDRINUSE, errno.EACCES):
                    raise DistributedError(
                        f"{flag} {address}: port {port} is already in use on this machine, where process 0 starts "
                        f"the coordinator; pick a free port and give every process the same {flag}"
                    ) from None
                if e.errno == errno.EADDRNOTAVAIL:  # e.g. IPv6 present but disabled: the IPv4 probe decides
                    continue
                raise
            return


def exit_after(seconds: float, message: str) -> threading.Timer:
    """Start a timer that prints `error: MESSAGE` and ends the process with exit 2 unless cancelled first.

    For a wait inside a framework's C++ that cannot be interrupted from Python and that ends, when
    its own deadline passes, by aborting the process (jax.distributed.initialize): give the framework
    a longer deadline and this one line comes first. Cancel it when the wait returns.
    """

    def expire() -> None:
        print("error: " + message, file=sys.stderr, flush=True)
        os._exit(2)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


def join_timeout_message(who: str, coordinator: str, num_processes: int, timeout_s: float) -> str:
    """The line of a process that waited `timeout_s` for all `num_processes` to join the coordinator."""
    return (
        f"{who}: the {num_processes} processes did not all join the coordinator at {coordinator} within "
        f"{timeout_s:g} s (--timeout); start every process with the same --coordinator and --num-processes, a "
        "distinct --process-id, and process 0 on a free port"
    )


# ----------------------------------------------------------------------------- agreeing on the world


def world_facts(
    backend: str, world_key: str, world_size: int, config, data, resume=None, init_from=None, **more
) -> dict:
    """What every process of one run must agree on before the first step, keyed by how the user names it.

    world_key names the world size as the launch gave it (e.g. "--num-processes", "WORLD_SIZE"). The data
    is a digest of the arrays each process loaded (train and test, images and labels); --resume is the
    saved epoch and run id; --init a digest of the file. `more`: e.g. the libraries' versions.
    The values round-trip through JSON, so facts from another process compare equal to this one's.
    """
    facts = {world_key: world_size, "--backend": backend}
    facts.update({f"--{key.replace('_', '-')}": value for key, value in config.to_dict().items()})
    facts["data"] = f"sha256 {data_digest(data)}"
    facts["--resume"] = resume_fact(resume)
    facts["--init"] = None if init_from is None else f"sha256 {file_sha256(init_from)[:16]}"
    facts.update(more)
    return json.loads(json.dumps(facts, default=str))


def facts_digest(facts: dict) -> str:
    """sha256 of the facts' canonical JSON: equal digests, equal worlds."""
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def data_digest(data) -> str:
    """sha256 (16 hex digits) of a FashionData's four arrays, their dtypes and shapes."""
    digest = hashlib.sha256()
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        array = np.ascontiguousarray(getattr(data, name))
        digest.update(f"{name} {array.dtype} {array.shape};".encode())
        digest.update(array.data)
    return digest.hexdigest()[:16]


def resume_fact(resume) -> str | None:
    """--resume as the point it continues from: "epoch E of run ID" (None without --resume)."""
    if resume is None:
        return None
    _, counters = read_train_state(resume)
    return f"epoch {counters.get('epoch')} of run {counters.get('run_id')}"


def world_disagreement(all_facts: list, who: str = "process") -> str | None:
    """None when every process's facts equal process 0's; else one line naming the first fact that differs."""
    reference, plural = all_facts[0], who + ("es" if who.endswith("s") else "s")
    keys = list(reference) + [k for facts in all_facts[1:] for k in facts if k not in reference]
    for key in keys:
        for index, facts in enumerate(all_facts[1:], 1):
            if facts.get(key) != reference.get(key):
                return (
                    f"the {plural} disagree before the first step: {who} {index}'s {key} is "
                    f"{_shown(facts.get(key))}, {who} 0's is {_shown(reference.get(key))}; start every {who} with "
                    "the same flags, data and checkpoint"
                )
    return None


def _shown(value) -> str:
    return "none" if value is None else str(value)


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
