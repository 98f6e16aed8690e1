"""`fashion-twins train` data-parallel: torch under torchrun, flax and nnx with --devices.

Both end where the one-device command ends.

The runs (16 steps of plain SGD on 1024 images) go through the command a user types; the
lockstep proof over 120 steps, resume and faults are tests/test_distributed.py's (through the
module entry points, which are aliases of this command). Usage errors run in this process and
must come before any rendezvous, backend start or data load.

Tolerance 1e-5 (max |dW|), as in tests/test_distributed.py: a data-parallel step sums the same
products in another order, so the runs differ by float32 rounding (~1e-7 here), while a wrong
slice or a missing average moves weights by ~1e-3.
"""

from __future__ import annotations

import sys

import pytest
from clitools import assert_ok, assert_one_error_line, cli, needs_data
from test_distributed import TOL, run, weights

from fashion_common.metrics import max_weight_diff

# A small slice: 1024 images at batch 64 = 16 steps; plain SGD, constant rate, no smoothing or decay,
# and ±1 px shifts on, so each rank (each device) must take its own columns of the global offsets too.
FLAGS = [
    "--augment-shift",
    "1",
    "--limit-train",
    "1024",
    "--limit-test",
    "256",
    "--epochs",
    "1",
    "--batch-size",
    "64",
    "--optimizer",
    "sgd",
    "--lr",
    "0.01",
    "--schedule",
    "constant",
    "--momentum",
    "0",
    "--weight-decay",
    "0",
    "--label-smoothing",
    "0",
    "--device",
    "cpu",
    "--seed",
    "0",
    "--quiet",
]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
CLI = ["-m", "fashion_twins", "train"]


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    """Each twin's single-device `fashion-twins train`, in this process: backend -> weights."""
    folder = tmp_path_factory.mktemp("cli_one_device")
    found = {}
    for backend in ("torch", "flax", "nnx"):
        out = folder / f"{backend}.safetensors"
        assert_ok(cli("train", "--backend", backend, *FLAGS, "--out", out))
        found[backend] = weights(out)
    return found


@needs_data
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_torchrun_cli_on_two_gloo_ranks_ends_at_the_one_device_weights_and_only_rank_0_writes(one_device, tmp_path):
    out = tmp_path / "ddp.safetensors"
    result = run([*TORCHRUN, *CLI, "--backend", "torch", *FLAGS, "--out", str(out)])
    assert max_weight_diff(weights(out), one_device["torch"]) <= TOL
    assert result.stdout.count("[torch] wrote") == 1 and result.stdout.count("[torch] epoch") == 1  # rank 1 is silent
    assert "x 2 ranks (DDP, gloo)" in (tmp_path / "ddp.metrics.json").read_text()


@needs_data
@pytest.mark.parametrize("backend", ["flax", "nnx"])
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_jax_twin_cli_with_two_simulated_devices_ends_at_the_one_device_weights(one_device, tmp_path, backend):
    out = tmp_path / "mesh.safetensors"
    # a subprocess: the simulated device count must be set before JAX's backend starts, and this one has started
    result = run([sys.executable, *CLI, "--backend", backend, "--devices", "2", *FLAGS, "--out", str(out)])
    assert max_weight_diff(weights(out), one_device[backend]) <= TOL
    assert result.stdout.count(f"[{backend}] wrote") == 1
    assert "cpu x 2 devices over 1 process(es) (simulated host devices)" in (tmp_path / "mesh.metrics.json").read_text()


@needs_data
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_init_starts_the_flax_twin_from_the_torch_init_so_it_ends_at_the_torch_weights(one_device, tmp_path):
    import fashion_torch

    init, out = tmp_path / "init.safetensors", tmp_path / "flax_from_torch.safetensors"
    fashion_torch.save_checkpoint(
        fashion_torch.create_model(seed=0), init
    )  # the torch twin's seeded init, as the torch run drew it
    assert_ok(cli("train", "--backend", "flax", *FLAGS, "--init", init, "--out", out))
    # the cross-framework lockstep bound: fp32 rounding of differently ordered sums over 16 steps
    assert max_weight_diff(weights(out), one_device["torch"]) <= TOL


# ------------------------------------------------------------------------ misuse: one line, exit 2, before any work


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (
            ["--backend", "torch", "--devices", "2"],
            ["argument --devices: the torch twin runs data-parallel under torchrun", "torchrun --nproc-per-node N"],
        ),
        (
            ["--backend", "torch", "--coordinator", "h:1234"],
            ["argument --coordinator: the torch twin runs data-parallel under torchrun", "--rdzv-endpoint"],
        ),
        (["--backend", "flax", "--num-processes", "2"], ["argument --num-processes: needs --coordinator HOST:PORT"]),
        (["--backend", "flax", "--process-id", "1"], ["argument --process-id: needs --coordinator HOST:PORT"]),
        (
            ["--backend", "flax", "--coordinator", "h:1234", "--num-processes", "2"],
            ["argument --coordinator: needs --num-processes K and --process-id I"],
        ),
        (
            ["--backend", "flax", "--coordinator", "h:1234", "--num-processes", "2", "--process-id", "2"],
            ["argument --process-id: must be in 0..1"],
        ),
        (
            [
                "--backend",
                "flax",
                "--coordinator",
                "h:1234",
                "--num-processes",
                "2",
                "--process-id",
                "0",
                "--devices",
                "2",
            ],
            ["argument --devices: a multi-process run"],
        ),
        (["--backend", "flax", "--coordinator", "h:99999"], ["argument --coordinator: must be HOST:PORT"]),
        (["--backend", "flax", "--devices", "0"], ["argument --devices: must be an integer >= 1, got '0'"]),
        (
            ["--backend", "flax", "--devices", "3", "--batch-size", "64"],
            ["global batch_size 64 is not divisible by 3 devices; use a multiple of 3 (e.g. 63)"],
        ),
        (
            ["--backend", "nnx", "--devices", "3", "--batch-size", "64"],
            ["global batch_size 64 is not divisible by 3 devices; use a multiple of 3 (e.g. 63)"],
        ),
        (["--backend", "nnx", "--process-id", "1"], ["argument --process-id: needs --coordinator HOST:PORT"]),
        (["--backend", "torch", "--timeout", "5"], ["argument --timeout: applies to data-parallel runs only"]),
        (
            ["--backend", "flax", "--timeout", "-1", "--devices", "2"],
            ["argument --timeout: must be a number of seconds in 1..2147483"],
        ),
        (
            ["--backend", "torch", "--init", "a.safetensors", "--resume", "b.safetensors"],
            ["argument --init: contradicts --resume"],
        ),
    ],
)
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_data_parallel_misuse_is_one_clear_line_before_any_work(argv, fragments, tmp_path):
    out = tmp_path / "m.safetensors"
    assert_one_error_line(cli("train", *argv, "--out", out), *fragments)
    assert not out.exists()


@pytest.mark.parametrize("backend", ["flax", "nnx"])
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_jax_twin_under_a_torchrun_world_is_refused_with_the_mesh_launch(monkeypatch, tmp_path, backend):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = cli("train", "--backend", backend, "--out", tmp_path / "m.safetensors")
    assert_one_error_line(result, f"the {backend} twin is not launched by torchrun (WORLD_SIZE=2): use --devices N")


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_torchrun_with_an_indivisible_batch_or_the_fused_engine_fails_before_the_rendezvous(monkeypatch, tmp_path):
    import torch.distributed as dist

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv(
        "WORLD_SIZE", "2"
    )  # no peer will ever come: a rendezvous would hang, so the checks must come first
    out = tmp_path / "m.safetensors"
    assert_one_error_line(
        cli("train", "--backend", "torch", "--batch-size", "65", "--out", out),
        "global batch_size 65 is not divisible by 2 ranks",
    )
    assert_one_error_line(
        cli("train", "--backend", "torch", "--engine", "fused", "--out", out),
        "argument --engine: fused",
        "single-device only",
    )
    assert not dist.is_initialized() and not out.exists()


# ----------------------------------------------------------------------------- compare --distributed N


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_compare_distributed_refuses_a_world_that_does_not_split_the_batch_before_any_work(tmp_path):
    out_dir = tmp_path / "report"
    result = cli("compare", "--distributed", "3", "--dry-run", "--out-dir", out_dir)
    assert_one_error_line(
        result, "global batch_size 64 is not divisible by 3 ranks/devices", "every rank/device gets an equal slice"
    )
    assert not out_dir.exists()


def test_compare_runs_the_distributed_stage_only_when_asked():
    from types import SimpleNamespace

    from fashion_compare.report import CompareOptions
    from fashion_compare.stages import STAGES

    def names(n):
        return [
            s.name for s in STAGES if s.enabled(SimpleNamespace(options=CompareOptions(distributed=n), device="cpu"))
        ]

    assert names(0) == [
        "data",
        "structures",
        "parity",
        "activations",
        "lockstep",
        "training",
        "classes",
    ]  # --dry-run as before
    assert names(2) == names(0) + ["distributed"]


@needs_data
@pytest.mark.slow  # two single-device runs, torchrun with 2 ranks and a 2-device mesh, 100 steps each: ~30 s on 2 cores
def test_compare_distributed_stage_records_the_figures_and_passes_its_five_checks(tmp_path, monkeypatch):
    import json

    from twin_data import real_data

    import fashion_compare.report as report_module
    from fashion_compare.report import CompareOptions, build_report
    from fashion_compare.stages import STAGES

    monkeypatch.setattr(report_module, "STAGES", tuple(s for s in STAGES if s.name in ("data", "distributed")))
    build_report(
        CompareOptions(out_dir=str(tmp_path), device="cpu", distributed=2, quiet=True),
        data=real_data(),
        log=lambda line: None,
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == {"state": "complete", "stages_done": ["data", "distributed"]}
    figures = report["distributed"]
    assert figures["simulated"] and figures["steps"] >= 100 and figures["per_rank_batch"] == 32
    assert all(figures[t]["parallel_ms_per_step"] > 0 for t in ("torch", "flax", "nnx"))
    assert figures["max_abs_dW_flax_sharded_vs_nnx_sharded"] <= TOL
    # each twin's parallel run vs one device, then torch DDP vs each JAX twin sharded
    checks = [c for c in report["checks"] if c["stage"] == "distributed"]
    assert len(checks) == 5 and all(c["passed"] and c["tolerance"] == TOL for c in checks), checks
    assert sum("nnx" in c["name"] for c in checks) == 2
    assert "SIMULATED devices" in (tmp_path / "report.md").read_text()
