"""Data-parallel twins: torch DDP under torchrun, flax and nnx over a sharded mesh train exactly as one device does.

Simulated devices on this CPU: two gloo ranks under `torchrun --standalone --nproc-per-node 2`,
four forced JAX host devices (XLA_FLAGS, set before JAX starts, so in a subprocess), and two JAX
processes on localhost with gloo CPU collectives. The two JAX twins (linen and NNX) run the same
mesh tests: `mesh_runs` and the two-process tests are parametrized over them. Every run starts
from the same weights (the torch twin's seed-0 init, saved once) and trains on the same global
batches with plain SGD.

Tolerance 1e-5 (max |dW|): a data-parallel step sums the same products in another order
(per-rank partial gradients, then an all-reduce), so each step differs by float32 rounding
(~1e-7 of a weight); over 120 steps at lr 1e-3 the runs stay ~1e-7 apart (measured 1e-9..5e-7),
while a wrong batch slice or a missing average shows up at ~1e-3 after one epoch.

Run as a script (`python tests/test_distributed.py mesh-worker BACKEND FOLDER`) this file is the
worker of the forced-device JAX subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the worker runs as a script, outside pytest's conftest
    sys.path.insert(0, str(ROOT))

from fashion_common import checkpoint as canonical  # noqa: E402
from fashion_common import distributed as common  # noqa: E402
from fashion_common.config import TrainConfig, tutorial_config  # noqa: E402
from fashion_common.distributed import DistributedError  # noqa: E402
from fashion_common.metrics import max_weight_diff  # noqa: E402

# The tutorial's plain SGD (lr 1e-3, batch 64, constant rate) on 1280 images: 20 steps an epoch, 120 steps in all.
CONFIG = tutorial_config(epochs=6, limit_train=1280, limit_test=500, device="cpu")
STEPS = CONFIG.epochs * (CONFIG.limit_train // CONFIG.batch_size)
TOL = 1e-5  # see the module docstring
MESH_DEVICES = 4
JAX_TWINS = ("flax", "nnx")  # the twins with a mesh (fashion_<twin>/distributed.py), one worker run each
TIMEOUT_S = 20  # --timeout of the fault test's ranks


def config_flags(config=CONFIG) -> list:
    """The train command's flags for a TrainConfig (CONFIG by default)."""
    return common.config_flags(config)


def child_env(**extra) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    # train sets --precision (highest by default) in every twin; this pins JAX's start-up default too, for any child
    # that computes before train_and_evaluate (JAX on a GPU would use TF32 without it).
    env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # on a GPU, a second JAX process beside pytest's must fit too
    env.pop("XLA_FLAGS", None)
    return {**env, **extra}


def run(cmd, timeout=300, **env) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=ROOT, env=child_env(**env), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stderr[-3000:]}"
    return result


def torchrun(*args, nproc=2) -> list:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "fashion_twins",
        "train",
        "--backend",
        "torch",
        *args,
    ]


def weights(path) -> dict:
    return canonical.read_state(path)[0]


def require_real_data():
    from twin_data import real_data

    return real_data()  # skips with the fix where the set is absent


# ----------------------------------------------------------------------------- framework-free pieces (no data needed)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_rank_slices_are_contiguous_and_put_together_give_the_global_batch(world):
    order = np.arange(5 * 64, dtype=np.int32).reshape(5, 64)
    slices = [common.rank_slice(order, r, world) for r in range(world)]
    assert all(s.shape == (5, 64 // world) for s in slices)
    np.testing.assert_array_equal(np.concatenate(slices, axis=1), order)
    np.testing.assert_array_equal(slices[-1][0], np.arange(64 - 64 // world, 64))


def test_batch_not_divisible_by_the_world_is_a_clear_error():
    with pytest.raises(
        DistributedError, match=r"global batch_size 66 is not divisible by 4 devices; use a multiple of 4 \(e.g. 64\)"
    ):
        common.check_world(4, 66, "devices")
    assert common.check_world(4, 64, "devices") == 16


def test_test_set_shards_cover_every_example_once():
    bounds = [common.shard_bounds(500, r, 3) for r in range(3)]
    assert bounds == [(0, 167), (167, 333), (333, 500)]


def test_world_comes_from_torchrun_variables_and_rejects_a_rank_outside_it():
    assert common.world_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == common.World(1, 2, 1)
    assert common.world_from_env({}) == common.World(0, 1, 0)
    with pytest.raises(DistributedError, match="RANK=2 is outside WORLD_SIZE=2"):
        common.world_from_env({"RANK": "2", "WORLD_SIZE": "2"})


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_torch_ddp_refuses_an_indivisible_batch_before_joining_the_process_group(monkeypatch, capsys, tmp_path):
    import torch.distributed as dist

    from fashion_twins.cli import main

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")  # no peer will ever come: a rendezvous would hang, the check must come first
    out = tmp_path / "m.safetensors"
    flags = [*config_flags(CONFIG.replace(batch_size=65)), "--out", str(out)]
    assert main(["train", "--backend", "torch", *flags]) == 2
    err = (
        capsys.readouterr().err.strip()
    )  # the module entry point is `fashion-twins train --backend torch`: its one error line
    assert err == (
        "error: global batch_size 65 is not divisible by 2 ranks; use a multiple of 2 (e.g. 64) so every rank "
        "gets an equal slice"
    )
    assert not dist.is_initialized() and not out.exists()


@pytest.mark.data
def test_torch_ddp_loop_in_this_process_as_a_world_of_one_ends_at_the_one_device_run(monkeypatch, tmp_path):
    """The fast tier's data-parallel check for torch: the DDP loop, in process, against the twin's own loop.

    A gloo process group of one rank (torch has no simulated devices in one process; two ranks need two
    processes, the slow tier's torchrun tests), the DDP wrapper, the rank slices and the reduced metrics, on the
    default recipe (AdamW, cosine, shifts, smoothing) for 2 epochs of 512 images. A world of one all-reduces
    each gradient over one rank, so the two runs are the same arithmetic: held to 1e-6 (measured 0).
    """
    import fashion_torch.distributed as ddp
    import fashion_torch.train as train

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):  # restored after the test
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(common.free_port()))
    data = require_real_data()
    config = TrainConfig(epochs=2, limit_train=512, limit_test=256, device="cpu")
    quiet = dict(quiet=True, log=lambda line: None)
    _, one = train.train_and_evaluate(config, data, out=str(tmp_path / "one.safetensors"), **quiet)
    try:
        _, world = ddp.train_and_evaluate(config, data, out=str(tmp_path / "ddp.safetensors"), **quiet)
    finally:
        ddp.shutdown()
    assert max_weight_diff(weights(tmp_path / "one.safetensors"), weights(tmp_path / "ddp.safetensors")) <= 1e-6
    assert world["device"] == "cpu x 1 ranks (DDP, gloo)"
    for a, b in zip(one["epochs"], world["epochs"], strict=True):
        for key in ("train_loss", "test_loss", "train_accuracy", "test_accuracy"):
            assert abs(a[key] - b[key]) <= 1e-6, (a["epoch"], key, a[key], b[key])


# ------------------------------------------------------------------------ the runs (module fixtures, each run once)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A folder holding the shared init and each run's checkpoint; runs are added by the fixtures below."""
    require_real_data()
    import fashion_torch

    folder = tmp_path_factory.mktemp("distributed")
    fashion_torch.save_checkpoint(fashion_torch.create_model(seed=CONFIG.seed), folder / "init.safetensors")
    return folder


@pytest.fixture(scope="module")
def torch_single(runs):
    """The torch twin's own single-device loop, in this process."""
    import fashion_torch.train as train

    data = require_real_data()
    _, metrics = train.train_and_evaluate(
        CONFIG,
        data,
        out=str(runs / "torch_single.safetensors"),
        quiet=True,
        log=lambda line: None,
        init_from=runs / "init.safetensors",
    )
    return weights(runs / "torch_single.safetensors"), metrics


@pytest.fixture(scope="module")
def torch_ddp(runs):
    """Two gloo ranks under torchrun, uninterrupted."""
    out, metrics = runs / "torch_ddp.safetensors", runs / "torch_ddp.json"
    result = run(
        torchrun(
            *config_flags(),
            "--init",
            str(runs / "init.safetensors"),
            "--out",
            str(out),
            "--metrics",
            str(metrics),
            "--quiet",
        )
    )
    return weights(out), json.loads(metrics.read_text()), result.stdout


@pytest.fixture(scope="module", params=JAX_TWINS)
def mesh_runs(request, runs):
    """One JAX process with 4 forced host devices: a JAX twin's single-device loop, then its sharded run.

    Returns (backend, single-device weights, sharded weights, the worker's report).
    """
    backend = request.param
    run(
        [sys.executable, str(Path(__file__).resolve()), "mesh-worker", backend, str(runs)],
        XLA_FLAGS=f"--xla_force_host_platform_device_count={MESH_DEVICES}",
    )
    report = json.loads((runs / f"{backend}_worker.json").read_text())
    single, sharded = weights(runs / f"{backend}_single.safetensors"), weights(runs / f"{backend}_sharded.safetensors")
    return backend, single, sharded, report


@pytest.fixture(scope="module")
def torch_fault(runs):
    """Two ranks started by hand (no torchrun agent to tear them down); rank 1 is killed after the first checkpoint."""
    out = runs / "torch_fault.safetensors"
    env = child_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(common.free_port()), WORLD_SIZE="2")
    cmd = [
        sys.executable,
        "-m",
        "fashion_twins",
        "train",
        "--backend",
        "torch",
        *config_flags(),
        "--init",
        str(runs / "init.safetensors"),
    ]
    cmd += ["--out", str(out), "--quiet", "--timeout", str(TIMEOUT_S)]
    ranks = [
        subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    returncode, err, seconds = kill_peer_after_first_checkpoint(ranks, out, wait_s=240)
    return {"returncode": returncode, "stderr": err, "seconds": seconds, "path": out}


def kill_peer_after_first_checkpoint(procs, out, wait_s: float):
    """SIGKILL procs[1] once process 0 has written `out`.

    Returns (process 0's exit code, its stderr, seconds from the kill to its exit).
    """
    try:
        deadline = time.monotonic() + wait_s
        while not out.exists() and procs[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        _, err = procs[0].communicate(timeout=TIMEOUT_S + 60)
        return procs[0].returncode, err, time.monotonic() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# ----------------------------------------------------------------------------- lockstep against one device


@pytest.mark.data
@pytest.mark.slow  # its runs are torchrun ranks and forced-device JAX processes
def test_jax_twin_sharded_over_four_devices_matches_one_device_after_120_steps(mesh_runs):
    _, single, sharded, report = mesh_runs
    assert STEPS >= 100 and report["devices"] == MESH_DEVICES
    assert max_weight_diff(single, sharded) <= TOL


@pytest.mark.data
@pytest.mark.slow  # its runs are torchrun ranks and forced-device JAX processes
def test_jax_twin_sharded_step_is_one_program_whose_gradients_are_all_reduced_and_params_replicated(mesh_runs):
    report = mesh_runs[3]
    assert "all-reduce" in report["collectives"]  # the compiler's gradient all-reduce, not a hand-written pmean
    assert report["per_device_batch_dot"]  # the forward matmul runs on B / 4 = 16 rows per device
    assert report["param_specs"] == ["()"] and report["opt_state_specs"] in ([], ["()"])  # every leaf replicated


@pytest.mark.data
@pytest.mark.slow  # its runs are torchrun ranks and forced-device JAX processes
def test_jax_twin_sharded_resume_after_a_crash_reaches_the_uninterrupted_weights(runs, mesh_runs):
    backend, _, sharded, _ = mesh_runs
    _, counters = canonical.read_train_state(runs / f"{backend}_interrupted.safetensors")
    assert counters["epoch"] == 3 and counters["backend"] == backend
    # the same mesh and program, restarted from the saved state: equal to float32 rounding at most
    assert max_weight_diff(weights(runs / f"{backend}_resumed.safetensors"), sharded) <= 1e-7


@pytest.mark.data
@pytest.mark.slow  # its runs are torchrun ranks and forced-device JAX processes
def test_jax_twin_sharded_refuses_a_batch_not_divisible_by_the_devices_before_training(mesh_runs):
    report = mesh_runs[3]
    assert report["indivisible_error"].startswith("global batch_size 66 is not divisible by 4 devices")
    assert report["indivisible_wrote_nothing"]


@pytest.mark.data
@pytest.mark.slow  # its runs are torchrun ranks and forced-device JAX processes
def test_torch_ddp_on_two_gloo_ranks_matches_one_device_after_120_steps(torch_single, torch_ddp):
    assert max_weight_diff(torch_single[0], torch_ddp[0]) <= TOL


@pytest.mark.data
@pytest.mark.slow  # its runs are torchrun ranks and forced-device JAX processes
def test_torch_ddp_metrics_are_reduced_over_ranks_to_the_single_device_figures(torch_single, torch_ddp):
    single, ddp = torch_single[1]["epochs"], torch_ddp[1]["epochs"]
    assert [r["epoch"] for r in ddp] == list(range(1, CONFIG.epochs + 1))
    for a, b in zip(single, ddp, strict=True):
        for key in ("train_loss", "test_loss"):
            assert abs(a[key] - b[key]) <= 1e-5, (
                key,
                a,
                b,
            )  # a mean of ~2.3 in float32: 1e-5 is a few ulps summed over 20 steps
        for key in ("train_accuracy", "test_accuracy"):
            assert abs(a[key] - b[key]) <= 1 / 500, (key, a, b)  # at most one prediction flips on weights 1e-7 apart
    assert torch_ddp[1]["device"] == "cpu x 2 ranks (DDP, gloo)"
    assert torch_ddp[2].count("[torch] epoch") == CONFIG.epochs  # rank 0 logs, rank 1 is silent


@pytest.mark.data
@pytest.mark.slow  # its runs are torchrun ranks and forced-device JAX processes
def test_torch_ddp_matches_the_jax_twin_sharded_within_tolerance(torch_ddp, mesh_runs):
    assert max_weight_diff(torch_ddp[0], mesh_runs[2]) <= TOL


# ----------------------------------------------------------------------------- faults and resume


@pytest.mark.data
@pytest.mark.slow  # the fault run (two hand-started ranks) and the torchrun resume: ~25 CPU-seconds together
def test_a_killed_rank_makes_rank_0_fail_with_a_clear_error_within_the_timeout(torch_fault):
    assert torch_fault["returncode"] == 2
    assert (
        torch_fault["seconds"] < TIMEOUT_S + 30
    )  # gloo sees the closed socket at once; the timeout bounds a silent peer
    last = torch_fault["stderr"].strip().splitlines()[-1]
    assert last.startswith("error: rank 0: a collective with the other ranks failed") and "--resume" in last


@pytest.mark.data
@pytest.mark.slow  # the fault run (two hand-started ranks) and the torchrun resume: ~25 CPU-seconds together
def test_the_checkpoint_after_a_killed_rank_is_the_last_complete_epoch(torch_fault):
    path = torch_fault["path"]
    slots, counters = canonical.read_train_state(path)
    canonical.check_pair(path, counters)  # weights and sidecar from the same epoch
    assert 1 <= counters["epoch"] < CONFIG.epochs and counters["step"] == counters["epoch"] * 20
    weights(path)  # loads with every key and shape


@pytest.mark.data
@pytest.mark.slow  # the fault run (two hand-started ranks) and the torchrun resume: ~25 CPU-seconds together
def test_resume_under_torchrun_after_the_fault_reaches_the_uninterrupted_weights(runs, torch_fault, torch_ddp):
    out = runs / "torch_resumed.safetensors"
    result = run(torchrun(*config_flags(), "--resume", str(torch_fault["path"]), "--out", str(out), "--quiet"))
    _, counters = canonical.read_train_state(torch_fault["path"])
    assert result.stdout.count("[torch] epoch") == CONFIG.epochs - counters["epoch"]
    # The same ranks, slices and reduction order: only the restart differs,
    # so the weights agree to the last bit or close.
    assert max_weight_diff(weights(out), torch_ddp[0]) <= 1e-7


# ----------------------------------------------------------------------------- two JAX processes


@pytest.mark.data
@pytest.mark.slow
def test_two_jax_processes_with_gloo_cpu_collectives_match_one_device(runs, mesh_runs):
    backend, single = mesh_runs[:2]
    port = common.free_port()
    out = runs / f"{backend}_two_processes.safetensors"
    cmd = [
        sys.executable,
        "-m",
        "fashion_twins",
        "train",
        "--backend",
        backend,
        *config_flags(),
        "--init",
        str(runs / "init.safetensors"),
        "--out",
        str(out),
        "--quiet",
    ]
    cmd += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--timeout", "60"]
    procs = [
        subprocess.Popen(
            [*cmd, "--process-id", str(i)],
            cwd=ROOT,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    try:
        outputs = [p.communicate(timeout=400) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert (
        outputs[0][0].count(f"[{backend}] epoch") == CONFIG.epochs and outputs[1][0].count(f"[{backend}] epoch") == 0
    )  # process 0 logs
    assert max_weight_diff(weights(out), single) <= TOL


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("backend", JAX_TWINS)
def test_a_killed_jax_process_makes_process_0_fail_with_a_clear_error_and_keeps_the_checkpoint(runs, backend):
    out = runs / f"{backend}_fault.safetensors"
    cmd = [
        sys.executable,
        "-m",
        "fashion_twins",
        "train",
        "--backend",
        backend,
        *config_flags(CONFIG.replace(epochs=30)),
        "--out",
        str(out),
        "--quiet",
    ]
    cmd += ["--coordinator", f"127.0.0.1:{common.free_port()}", "--num-processes", "2", "--timeout", str(TIMEOUT_S)]
    procs = [
        subprocess.Popen(
            [*cmd, "--process-id", str(i)],
            cwd=ROOT,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    returncode, err, seconds = kill_peer_after_first_checkpoint(procs, out, wait_s=300)
    assert returncode == 2 and seconds < TIMEOUT_S + 30
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: rank 0: a collective with the other ranks failed"), err[-2000:]
    _, counters = canonical.read_train_state(out)
    canonical.check_pair(out, counters)
    assert 1 <= counters["epoch"] < 30


# ----------------------------------------------------------------------------- world size 1 on a GPU (NCCL for torch)


@pytest.mark.gpu
@pytest.mark.data
@pytest.mark.slow  # its runs are torchrun ranks and forced-device JAX processes
def test_each_distributed_path_at_world_size_1_on_cuda_matches_the_single_device_run(runs, gpu):
    init = runs / "init.safetensors"
    backend = "gloo" if gpu.rehearsal else "nccl"  # NCCL is CUDA only: the rehearsal proves the plumbing on gloo
    gpu = CONFIG.replace(device=gpu.config)
    t_out, f_out, f_ref = (
        runs / "gpu_torch_ddp.safetensors",
        runs / "gpu_flax_sharded.safetensors",
        runs / "gpu_flax_single.safetensors",
    )
    result = run(
        torchrun(
            *config_flags(gpu),
            "--init",
            str(init),
            "--out",
            str(t_out),
            "--metrics",
            str(runs / "gpu_torch.json"),
            "--quiet",
            nproc=1,
        )
    )
    assert f"(DDP, {backend})" in json.loads((runs / "gpu_torch.json").read_text())["device"], result.stdout
    run(
        [
            sys.executable,
            "-m",
            "fashion_twins",
            "train",
            "--backend",
            "flax",
            *config_flags(gpu),
            "--devices",
            "1",
            "--init",
            str(init),
            "--out",
            str(f_out),
            "--quiet",
        ]
    )
    # the twins' single-device loops on the GPU, from the same init
    import fashion_flax.train as flax_train
    import fashion_torch.train as torch_train

    data = require_real_data()
    for train, out in ((torch_train, runs / "gpu_torch_single.safetensors"), (flax_train, f_ref)):
        train.train_and_evaluate(gpu, data, out=str(out), quiet=True, log=lambda line: None, init_from=init)
    assert max_weight_diff(weights(t_out), weights(runs / "gpu_torch_single.safetensors")) <= TOL
    assert max_weight_diff(weights(f_out), weights(f_ref)) <= TOL
    assert max_weight_diff(weights(t_out), weights(f_out)) <= TOL


# ----------------------------------------------------------------------------- the comparison for the report


def test_distributed_comparison_refuses_an_indivisible_batch_before_any_run():
    from fashion_compare.distributed import distributed_comparison

    with pytest.raises(DistributedError, match="global batch_size 64 is not divisible by 3 ranks/devices"):
        distributed_comparison(world_size=3, steps=10, batch_size=64, data=object())


def test_report_section_labels_simulated_devices_and_gives_every_twins_step_times_and_dW():
    from test_compare import _handmade_report

    from fashion_compare.render import render_markdown

    twin = {
        "single_ms_per_step": 7.0,
        "parallel_ms_per_step": 9.5,
        "max_abs_dW_parallel_vs_single": 2.0e-7,
        "parallel_device": "cpu x 2 ranks (DDP, gloo)",
    }
    result = {
        "world_size": 2,
        "steps": 100,
        "batch_size": 64,
        "per_rank_batch": 32,
        "config": "plain SGD",
        "device": "cpu (x86_64, 2 cores)",
        "torch_threads_per_process": 1,
        "simulated": True,
        "note": "simulated: 2 ranks share 2 cores",
        "torch": twin,
        "flax": {**twin, "parallel_ms_per_step": 12.25},
        "nnx": {**twin, "parallel_ms_per_step": 11.5, "max_abs_dW_parallel_vs_single": 4.0e-7},
        "max_abs_dW_torch_ddp_vs_flax_sharded": 3.0e-7,
        "max_abs_dW_torch_single_vs_flax_single": 2.5e-7,
        "max_abs_dW_torch_ddp_vs_nnx_sharded": 3.5e-7,
        "max_abs_dW_flax_sharded_vs_nnx_sharded": 0.0,
    }
    text = render_markdown({**_handmade_report(), "distributed": result})
    section = text[text.index("## 8. Data parallel") :]
    assert section.startswith("## 8. Data parallel: 1 device vs 2 — SIMULATED devices (2 on one CPU's cores)\n")
    assert (
        "| torch | DDP, torchrun --nproc-per-node 2 | 7.00 | 9.50 | 2.00e-07 | cpu x 2 ranks (DDP, gloo) |" in section
    )
    assert "| flax | jit over Mesh(('data',)), 2 devices | 7.00 | 12.25 | 2.00e-07 |" in section
    assert "| nnx | nnx.split state, jit over Mesh(('data',)), 2 devices | 7.00 | 11.50 | 4.00e-07 |" in section
    assert "torch DDP vs nnx sharded: 3.50e-07, flax vs nnx sharded: 0." in section
    old = {k: v for k, v in result.items() if "nnx" not in k}  # a report written before the NNX twin
    old_text = render_markdown({**_handmade_report(), "distributed": old})
    assert "| nnx | nnx.split" not in old_text[old_text.index("## 8. Data parallel") :]
    assert (
        "torch DDP vs flax sharded: max \\|ΔW\\| 3.00e-07" in section
        and "_simulated: 2 ranks share 2 cores._" in section
    )
    assert "SIMULATED" not in render_markdown({**_handmade_report(), "distributed": {**result, "simulated": False}})
    assert "## 8." not in render_markdown(_handmade_report())  # no --distributed, no section


# ----------------------------------------------------------------------------- the forced-device worker


def mesh_worker(backend: str, folder: Path) -> None:
    """In a process with XLA_FLAGS forcing 4 host devices: a JAX twin's (flax or nnx) runs.

    Single-device and sharded runs, plus what the tests inspect.
    """
    import importlib
    import re

    import jax
    from flax import nnx

    from fashion_common.data import load_fashion_mnist

    twin = importlib.import_module(f"fashion_{backend}")
    train = importlib.import_module(f"fashion_{backend}.train")
    fdist = importlib.import_module(f"fashion_{backend}.distributed")
    twin.set_matmul_precision("highest")
    data = load_fashion_mnist()
    quiet = dict(quiet=True, log=lambda line: None)
    # the twin's own single-device loop on the first device
    train.train_and_evaluate(
        CONFIG, data, out=str(folder / f"{backend}_single.safetensors"), init_from=folder / "init.safetensors", **quiet
    )
    # the sharded run over every device; its first compiled step is kept, as the epoch called it, for the report
    mesh = fdist.make_mesh()
    programs = []
    sharded_train_steps = fdist.sharded_train_steps

    def recording(mesh):
        step_fn = sharded_train_steps(mesh)

        def call(*args, **kwargs):
            if not programs:  # the program the epoch runs, with the shardings it really passes
                programs.append(step_fn.lower(*args, **kwargs).compile().as_text())
            return step_fn(*args, **kwargs)

        return call

    fdist.sharded_train_steps = recording  # train_epoch looks it up in its module at each call
    state, _ = fdist.train_and_evaluate(
        CONFIG,
        data,
        out=str(folder / f"{backend}_sharded.safetensors"),
        init_from=folder / "init.safetensors",
        mesh=mesh,
        **quiet,
    )
    fdist.sharded_train_steps = sharded_train_steps
    hlo = programs[0]

    # a sharded run that crashes right after epoch 3's checkpoint (log runs after the save), resumed over the mesh
    class Crash(Exception):
        pass

    lines = []

    def crash_after_epoch_3(line):
        lines.append(line)
        if len(lines) == 3:
            raise Crash

    interrupted = folder / f"{backend}_interrupted.safetensors"
    with contextlib.suppress(Crash):
        fdist.train_and_evaluate(
            CONFIG,
            data,
            out=str(interrupted),
            init_from=folder / "init.safetensors",
            mesh=mesh,
            quiet=True,
            log=crash_after_epoch_3,
        )
    fdist.train_and_evaluate(
        CONFIG, data, out=str(folder / f"{backend}_resumed.safetensors"), resume=str(interrupted), mesh=mesh, **quiet
    )
    # what the compiler made of the sharded step, and where the state lives
    opt_state = nnx.state(state.optimizer, nnx.OptState) if backend == "nnx" else state.opt_state
    per_device = CONFIG.batch_size // mesh.size
    # a bad batch, refused before anything is written
    bad_out = folder / f"{backend}_indivisible.safetensors"
    try:
        fdist.train_and_evaluate(CONFIG.replace(batch_size=66), data, out=str(bad_out), mesh=mesh, **quiet)
        error = ""
    except DistributedError as e:
        error = str(e)

    def specs(tree):
        return sorted({str(tuple(x.sharding.spec)) for x in jax.tree_util.tree_leaves(tree)})  # "()" = replicated

    report = {
        "devices": mesh.size,
        "collectives": sorted(set(re.findall(r"\b(all-reduce|all-gather|reduce-scatter|all-to-all)\(", hlo))),
        "per_device_batch_dot": bool(re.search(rf"f32\[{per_device},512\]\S* dot\(", hlo)),
        "param_specs": specs(state.params),
        "opt_state_specs": specs(opt_state),  # plain SGD has no slots: [] (nnx: its step counter, replicated)
        "indivisible_error": error,
        "indivisible_wrote_nothing": not bad_out.exists(),
    }
    (folder / f"{backend}_worker.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    if sys.argv[1:2] == ["mesh-worker"]:
        mesh_worker(sys.argv[2], Path(sys.argv[3]))


@pytest.mark.parametrize("world_size, n", [(3, 10), (2, 7), (4, 5)])
def test_ddp_evaluation_weights_each_ranks_unequal_shard_by_its_images(monkeypatch, world_size, n):
    """The DDP evaluate on every rank of a simulated world, its all-reduce replaced by the sum over the ranks.

    10 test images over 3 ranks are shards of 4, 3 and 3: the mean over all images is not the mean of the
    ranks' means. The single-device evaluation of the same weights is the oracle.
    """
    import types

    from twin_data import separable_set

    import fashion_torch.distributed as tdist
    import fashion_torch.train as train
    from fashion_common.config import TrainConfig
    from fashion_common.distributed import World

    config = TrainConfig(device="cpu", epochs=1, batch_size=32, lr=2e-4, eval_batch_size=3, limit_test=n)
    state, _ = train.train_and_evaluate(config, separable_set(), quiet=True, log=lambda s: None)  # part-trained
    data = train.put_data(separable_set().limit(test=n))
    expected = train.evaluate(state, data, config)

    sent = []
    monkeypatch.setattr(tdist, "_all_reduce_sum", lambda values, device: sent.append(list(values)) or list(values))
    ranks = [types.SimpleNamespace(world=World(r, world_size), model=state.model) for r in range(world_size)]
    for rank in ranks:  # pass 1: what each rank contributes
        tdist.evaluate(rank, data, config)
    totals = [sum(column) for column in zip(*sent, strict=True)]
    monkeypatch.setattr(tdist, "_all_reduce_sum", lambda values, device: list(totals))
    for rank in ranks:  # pass 2: every rank sees the reduced sums, as after a real all-reduce
        got = tdist.evaluate(rank, data, config)
        assert got["test_accuracy"] == expected["test_accuracy"]
        assert got["test_loss"] == pytest.approx(expected["test_loss"], rel=1e-6)
