"""How each twin's CPU thread pool behaves on this machine, now: the evidence for the `auto` thread policy.

    python -m fashion_compare.threads [--rounds 3] [--steps 150] [--out threads.json]

Each variant is a fresh process (OMP_WAIT_POLICY, GOMP_SPINCOUNT and XLA_FLAGS are read once, when
the framework loads), timing --steps training steps of the MLP at batch 64 with the tutorial's plain
SGD: torch's autograd step (fashion_torch.train.train_step) and flax's scanned step
(fashion_flax.train.train_steps). Variants run interleaved (A B C ... A B C ...), so a change of load
during the run hits every variant alike; each figure is seconds per 937-step epoch, with the load
average beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from fashion_common.runtime import machine_state

EPOCH_STEPS = 60_000 // 64  # 937 steps of batch 64

# name -> (backend, torch threads or None, extra environment)
VARIANTS = {
    "torch 2 threads (default)": ("torch", 2, {}),
    "torch 1 thread": ("torch", 1, {}),
    "torch 2 threads, OMP_WAIT_POLICY=PASSIVE": ("torch", 2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "torch 2 threads, GOMP_SPINCOUNT=0": ("torch", 2, {"GOMP_SPINCOUNT": "0"}),
    "torch 2 threads, GOMP_SPINCOUNT=10000": ("torch", 2, {"GOMP_SPINCOUNT": "10000"}),
    "torch 1 thread, GOMP_SPINCOUNT=0": ("torch", 1, {"GOMP_SPINCOUNT": "0"}),
    "torch auto (the CLI's policy)": ("torch", None, {"FASHION_TWINS_THREAD_POLICY": "auto"}),
    "flax (XLA default)": ("flax", None, {}),
    "flax auto (the CLI's policy)": ("flax", None, {"FASHION_TWINS_THREAD_POLICY": "auto"}),
    "flax, --xla_cpu_multi_thread_eigen=false": ("flax", None, {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}),
    "flax, eigen off + intra_op_parallelism_threads=1": (
        "flax",
        None,
        {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"},
    ),
}

_CHILD = r"""
import json, os, sys, time
backend, threads, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if os.environ.get("FASHION_TWINS_THREAD_POLICY"):  # what the command line does, before any framework import
    from fashion_common.runtime import apply_threads
    apply_threads(os.environ["FASHION_TWINS_THREAD_POLICY"])
import numpy as np
from fashion_common.config import tutorial_config
from fashion_common.data import batch_order, load_fashion_mnist
data = load_fashion_mnist()
config = tutorial_config(device="cpu")
order = batch_order(0, 1, len(data.train_labels), 64)[: steps + 20]
if backend == "torch":
    import torch
    if threads:
        torch.set_num_threads(threads)
    import fashion_torch.train as train
    state = train.create_train_state(config, total_steps=len(order))
    d = train.put_data(data)
    o = torch.as_tensor(order)
    def run(rows):
        for i in rows:
            loss, _ = train.train_step(state, d.train_images[o[i]], d.train_labels[o[i]])
        float(loss)
    run(range(20))
    start = time.perf_counter()
    run(range(20, 20 + steps))
    used = torch.get_num_threads()
else:
    import jax
    import fashion_flax.train as train
    state = train.create_train_state(config, total_steps=len(order))
    d = train.put_data(data)
    o = jax.device_put(order)
    state, loss, _ = train.train_steps(state, d.train_images, d.train_labels, o[20:], 0.0)  # compile + warm
    float(loss)
    start = time.perf_counter()
    state, loss, _ = train.train_steps(state, d.train_images, d.train_labels, o[20:], 0.0)
    float(loss)
    used = None
print(json.dumps({"seconds": time.perf_counter() - start, "threads": used}))
"""


def run_variant(name: str, steps: int) -> dict:
    """One fresh process timing `steps` steps of one variant -> {seconds_per_epoch, load before/after, ...}."""
    backend, threads, env = VARIANTS[name]
    before = machine_state()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, backend, str(threads or 0), str(steps)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    after = machine_state()
    if proc.returncode != 0:
        return {"variant": name, "error": proc.stderr.strip().splitlines()[-1:], "load_start": before["load_1m"]}
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "variant": name,
        "seconds_per_epoch": child["seconds"] / steps * EPOCH_STEPS,
        "torch_threads": child["threads"],
        "load_start": before["load_1m"],
        "load_end": after["load_1m"],
        "usable_cores": before["usable_cores"],
    }


def interleaved(names: list, rounds: int) -> list:
    """The run order: every variant once per round, rounds one after another (A B C A B C ...)."""
    return [name for _ in range(rounds) for name in names]


def summarize(runs: list) -> dict:
    """variant -> {median, min, max seconds per epoch, loads seen}, over its runs without errors."""
    out = {}
    for name in dict.fromkeys(r["variant"] for r in runs):
        times = [r["seconds_per_epoch"] for r in runs if r["variant"] == name and "seconds_per_epoch" in r]
        loads = [r[k] for r in runs if r["variant"] == name for k in ("load_start", "load_end") if k in r]
        out[name] = {
            "median_s": statistics.median(times) if times else None,
            "min_s": min(times) if times else None,
            "max_s": max(times) if times else None,
            "load_min": min(loads),
            "load_max": max(loads),
            "runs": len(times),
        }
    return out


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    p.add_argument("--steps", type=int, default=150, help="timed steps per run, after 20 warm-up steps (default: 150)")
    p.add_argument("--only", default="", help="comma-separated substrings of variant names to run (default: all)")
    p.add_argument("--out", default=None, help="also write every run and the summary as JSON (default: none)")
    args = p.parse_args(argv)
    names = [n for n in VARIANTS if not args.only or any(s.strip() in n for s in args.only.split(","))]
    runs = []
    for name in interleaved(names, args.rounds):
        run = run_variant(name, args.steps)
        runs.append(run)
        shown = f"{run['seconds_per_epoch']:.2f} s/epoch" if "seconds_per_epoch" in run else f"error {run['error']}"
        print(f"[threads] {name}: {shown}, load {run['load_start']:.2f} -> {run.get('load_end', float('nan')):.2f}")
        sys.stdout.flush()
    summary = summarize(runs)
    print(f"{'variant':52s} {'median s/epoch':>14s} {'min-max':>15s} {'load':>11s}")
    for name, s in summary.items():
        if s["median_s"] is not None:
            span = f"{s['min_s']:.2f}-{s['max_s']:.2f}"
            print(f"{name:52s} {s['median_s']:14.2f} {span:>15s} {s['load_min']:.1f}-{s['load_max']:.1f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"runs": runs, "summary": summary, "when": time.strftime("%Y-%m-%d %H:%M:%S")}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
