"""Process-wide settings for the entry points (scripts), never applied on import of a library module."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import time

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_allocator() -> bool:
    """Keep freed memory in the heap instead of returning it to the OS; True if glibc took the settings.

    A training step frees and re-allocates the same few buffers every time (a batch, activations,
    XLA's temporaries). With glibc's defaults, blocks of 128 KiB and more go to mmap/munmap and
    the top of the heap is trimmed, so every step pays page faults again; on the 2-core CPU this
    made the torch epoch flip between ~1.5 s and ~2.5 s from run to run (seen with JAX loaded in
    the same process, as in the benchmark). A fixed 32 MiB mmap threshold, no trimming and a
    64 MiB top pad made it steady. The cost is memory the process keeps after freeing it.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
        ok &= libc.mallopt(_M_TOP_PAD, 64 * 1024 * 1024)
        return bool(ok)
    except (OSError, AttributeError):  # not glibc (musl, macOS): leave the allocator alone
        return False


# ----------------------------------------------------------------------------- cores, load and threads

BUSY_WARNING = "the machine was busy: times compare the load, not the frameworks"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; a container's cpuset shows here, os.cpu_count does not)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages, or None where the OS has none (Windows)."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


def is_busy(load_1m: float | None, cores: int) -> bool:
    """True when more runnable work than usable cores: every timed thread then waits its turn."""
    return load_1m is not None and load_1m > cores


# A timed span was busy when other processes took more than this share of the usable cores' time.
# Idle, the 2-core box's background (shells, the kernel) measured a few percent; one CPU hog beside a
# 2-thread benchmark takes about a third, two hogs about a half.
OTHERS_BUSY_SHARE = 0.25


def cpu_counters() -> dict | None:
    """CPU seconds so far: busy on this process's usable cores, this process's own (and its waited children's).

    {"busy_s", "own_s", "wall_s"}, or None where /proc/stat is missing (not Linux). The busy time of
    the usable cores minus this process's own time, over a span, is what OTHER processes took: unlike
    the load average (a one-minute memory that counts this process's own threads), it says whether
    anything else competed while a figure was timed.
    """
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
        cpus = os.sched_getaffinity(0)
    except (OSError, AttributeError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    busy = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
            busy += user + nice + system + irq + softirq + steal
    own = os.times()
    return {
        "busy_s": busy / ticks,
        "own_s": own.user + own.system + own.children_user + own.children_system,
        "wall_s": time.monotonic(),
    }


def others_share(start: dict | None, end: dict | None, cores: int) -> float | None:
    """The share of the usable cores' time other processes took between two cpu_counters(); None if unknown."""
    if start is None or end is None:
        return None
    wall = end["wall_s"] - start["wall_s"]
    if wall < 0.5:  # too short for clock ticks (1/100 s) to say anything
        return None
    others = (end["busy_s"] - start["busy_s"]) - (end["own_s"] - start["own_s"])
    return round(min(1.0, max(0.0, others / (wall * cores))), 3)


def machine_state() -> dict:
    """{"load_1m", "load_5m", "usable_cores", "busy", "cpu"} now (loads None where the OS has none).

    "busy" is the load average's verdict (above the usable cores), for a moment; "cpu" holds the
    counters that let a span between two states say what other processes took (others_share).
    """
    load = load_average()
    cores = usable_cores()
    return {
        "load_1m": None if load is None else round(load[0], 2),
        "load_5m": None if load is None else round(load[1], 2),
        "usable_cores": cores,
        "busy": is_busy(None if load is None else load[0], cores),
        "cpu": cpu_counters(),
    }


# libgomp's spin before a waiting OpenMP worker sleeps, in iterations (its default is 300,000, ~ms).
# On busy cores a spinning worker burns the time slice the thread it waits for needs: at load 6-17 on
# the 2-core CPU torch's default 2-thread epoch took 415-1153 s, 2 threads that sleep at once 4.9-44 s
# (median 16), 1 thread 27-75 s (median 48: the scheduler shares the cores per thread, so fewer threads
# got less, not more); a short spin (10,000) took 49-99 s. See README, On a busy machine.
AUTO_SPINCOUNT = "0"
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "XLA_FLAGS")
_APPLIED: dict = {}


def parse_threads(text: str) -> str | int:
    """'auto' or an integer >= 1 (the --threads value); ValueError otherwise."""
    if text == "auto":
        return "auto"
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"must be auto or an integer >= 1, got {text!r}")
    if value > 2**31 - 1:  # torch.set_num_threads and OpenMP take a C int
        raise ValueError(f"must be auto or an integer in 1..{2**31 - 1}, got {text!r}")
    return value


def thread_policy(choice: str | int, cores: int, load_1m: float | None, environ) -> dict:
    """What --threads CHOICE means here: {"requested", "threads", "env" (variables to set), "reason"}.

    auto: every usable core (OpenMP's own default; a user's OMP_NUM_THREADS wins), whatever the load:
    measured, fewer threads on a busy machine were slower, since the scheduler shares cores per thread.
    An explicit N sets N. With more than one thread and no wait policy of the user's, OpenMP workers
    do not spin (AUTO_SPINCOUNT), so a load that is there or comes during the run cannot make them burn
    each other's time. The load is recorded beside the times, never used to pick the count.
    """
    env = {}
    user = environ.get("OMP_NUM_THREADS", "")
    if choice == "auto" and user.isdigit() and int(user) >= 1:
        threads, reason = int(user), "auto: OMP_NUM_THREADS from the environment"
    elif choice == "auto":
        threads, reason = cores, f"auto: every usable core ({cores})"
    else:
        threads, reason = int(choice), f"--threads {choice}"
        env["OMP_NUM_THREADS"] = str(threads)
    if threads > 1 and "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        env["GOMP_SPINCOUNT"] = AUTO_SPINCOUNT
        reason += f"; GOMP_SPINCOUNT={AUTO_SPINCOUNT} (waiting workers sleep, never spin)"
    return {"requested": choice, "threads": threads, "env": env, "reason": reason}


def apply_threads(choice: str | int) -> dict:
    """The command line's thread policy, applied before torch or JAX is imported (env read at their start).

    Where torch is already loaded (a caller's own process), only its thread count can change, through
    fashion_torch.set_threads; the environment is then left alone. Returns the policy applied.
    """
    state = machine_state()
    policy = thread_policy(choice, state["usable_cores"], state["load_1m"], os.environ)
    if "torch" in sys.modules:
        import fashion_torch  # already loaded with torch; imported here to keep this module framework-free

        fashion_torch.set_threads(policy["threads"])
        policy["reason"] += " (torch was already loaded: thread count only)"
    else:
        os.environ.update(policy["env"])
    _APPLIED.clear()
    _APPLIED.update(policy, machine_at_start=state)
    return policy


def thread_report() -> dict:
    """The threads this process trains with, for METRICS.json, the report and the benchmark JSON.

    {"requested": --threads or None (no policy applied), "policy": why, "torch_threads" (torch loaded),
    "env": the thread variables as the frameworks saw them, "usable_cores", "load_1m" now}.
    """
    torch = sys.modules.get("torch")
    return {
        "requested": _APPLIED.get("requested"),
        "policy": _APPLIED.get("reason", "library defaults (no --threads policy applied)"),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
        **{k: v for k, v in machine_state().items() if k in ("usable_cores", "load_1m")},
    }


def matmul_precision_report() -> dict:
    """float32 matmul mode of each loaded framework, for METRICS.json: {"torch": "highest"|"tf32", "jax": ...}.

    Read from the frameworks' own settings (what --precision set), never importing one: torch's
    float32_matmul_precision "highest" is highest, "high"/"medium" let TF32 in; JAX's default matmul
    precision "highest" is highest, anything else (its default None included) is TF32 on a GPU.
    """
    report = {}
    torch = sys.modules.get("torch")
    if torch is not None:
        report["torch"] = "highest" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    jax = sys.modules.get("jax")
    if jax is not None:
        report["jax"] = "highest" if jax.config.jax_default_matmul_precision == "highest" else "tf32"
    return report
