"""scripts/device_check.sh, rehearsed on the CPU: the GPU shot's plumbing (parts, timeouts, files, verdicts).

The rehearsal runs the same parts in the same order with the same output handling as on the GPU, at
small sizes, with the gpu-marked test bodies on the CPU (tests/conftest.py's `gpu` fixture). So the
script cannot rot between the rare runs on a lent GPU: a test crashing at set-up, a part that writes
nothing, more files than a lent machine returns, all fail here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from twin_data import real_data_available

from fashion_common.data import DEBIAN_DIR, ENV_DATA

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "device_check.sh"
# What a lent machine returns: at most 8 files, each <= 16 MiB, at most two folders down, plain names.
RETURNED = {
    "summary.txt",
    "preflight.json",
    "junit.xml",
    "gpu_parity.json",
    "benchmark-highest.json",
    "benchmark-tf32.json",
    "report.json",
    "logs.tar.gz",
}
# The test bodies that must have run (not skipped, not erroring at set-up) on the CPU.
MUST_PASS = (
    "test_hand_written_torch_step_on_cuda_matches_autograd_on_cuda",
    "test_compiled_torch_engines_on_cuda_take_the_same_steps_as_eager_autograd[compile]",
    "test_flax_scanned_slices_on_the_gpu_match_per_step_updates",
    "test_resuming_on_cuda_restores_optimizer_and_scheduler_to_the_same_final_weights[eager]",
    "test_resuming_on_cuda_restores_optimizer_and_scheduler_to_the_same_final_weights[compile]",
    "test_torch_autograd_on_cuda_and_flax_on_the_gpu_trained_in_lockstep_stay_within_1e_5[eager]",
    "test_torch_autograd_on_cuda_and_flax_on_the_gpu_trained_in_lockstep_stay_within_1e_5[compile]",
    "test_gpu_twins_agree_within_1e_5_at_highest_precision[nnx]",
    "test_gpu_twins_stay_finite_and_within_1e_2_with_tf32_matmuls[flax]",
    "test_each_twin_trains_an_epoch_on_the_gpu_and_reports_its_peak_device_memory[nnx]",
    "test_each_distributed_path_at_world_size_1_on_cuda_matches_the_single_device_run",
)


def data_dir() -> str:
    return os.environ.get(ENV_DATA) or str(DEBIAN_DIR)


def rehearse(out: Path, timeout: int = 900, **env) -> subprocess.CompletedProcess:
    child = {**os.environ, "OMP_NUM_THREADS": "1", ENV_DATA: data_dir(), **env}
    child.pop("PYTHONPATH", None)  # the script puts its own checkout first
    return subprocess.run(
        ["bash", str(SCRIPT), "--rehearse", str(out)], env=child, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.skipif(not real_data_available(), reason="real Fashion-MNIST absent (the script reads ./data)")
def test_the_rehearsal_passes_on_the_cpu_and_leaves_the_8_files_a_lent_machine_returns(tmp_path):
    out = tmp_path / "out"
    result = rehearse(out)
    summary = (out / "summary.txt").read_text() if (out / "summary.txt").is_file() else result.stdout
    assert result.returncode == 0, summary[-4000:] + result.stderr[-2000:]
    assert summary.rstrip().splitlines()[-1].endswith("PASSED"), summary

    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} == RETURNED and len(files) <= 8
    for p in files:
        assert p.parent == out and re.fullmatch(r"[A-Za-z0-9._-]+", p.name) and p.stat().st_size <= 16 * 2**20

    cases = {c.get("name"): c for c in ET.parse(out / "junit.xml").getroot().iter("testcase")}
    for name in MUST_PASS:
        assert name in cases and not list(cases[name]), (name, [child.tag for child in cases.get(name, [])])
    for name, case in cases.items():  # the only skips are CUDA-only, with their reason; no error at set-up
        assert not case.findall("error") and not case.findall("failure"), name
        for skip in case.findall("skipped"):
            assert skip.get("message", "").startswith("CUDA only: cuda_graph"), (name, skip.get("message"))

    figures = json.loads((out / "gpu_parity.json").read_text())
    assert figures["rehearsal"] is True
    for precision in ("highest", "tf32"):
        for twin in ("flax", "nnx"):
            assert max(figures[f"parity_{precision}"][f"torch vs {twin}"].values()) <= 1e-5  # fp32 on a CPU
    assert set(figures["lockstep_highest"]) == {"torch eager vs flax", "torch compile vs flax"}
    bench = json.loads((out / "benchmark-highest.json").read_text())
    assert bench["results"][0]["matmul_precision"] == "highest" and bench["results"][0]["num_train"] == 2048
    assert {t["backend"] for t in bench["time_to_accuracy"]} == {"torch", "flax", "nnx"}
    assert json.loads((out / "report.json").read_text())["training"]["precision"] == "highest"


@pytest.mark.slow
def test_the_device_check_stops_with_one_line_when_the_data_folder_is_missing(tmp_path):
    result = rehearse(tmp_path / "out", timeout=60, **{ENV_DATA: str(tmp_path / "no-data")})
    assert result.returncode == 2
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("error: Fashion-MNIST not found: ") and "no-data/train-images-idx3-ubyte.gz" in last
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["summary.txt"]


@pytest.mark.slow
@pytest.mark.skipif(not real_data_available(), reason="real Fashion-MNIST absent: the data check would stop it first")
def test_the_device_check_stops_with_one_line_when_its_preflight_outlives_its_slot(tmp_path):
    # 1 s cannot import torch and JAX: the part is stopped by its own timeout, and the check says so
    result = rehearse(tmp_path / "out", timeout=60, LIMIT_PREFLIGHT="1")
    assert result.returncode == 2
    assert result.stdout.strip().splitlines()[-1] == (
        "error: preflight timed out (limit 1s): the frameworks did not start in time"
    )


@pytest.mark.slow
@pytest.mark.skipif(not real_data_available(), reason="real Fashion-MNIST absent: the data check would stop it first")
@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine may pass the preflight")
def test_the_device_check_on_a_machine_without_cuda_stops_at_the_preflight_with_one_line(tmp_path):
    child = {**os.environ, "OMP_NUM_THREADS": "1", ENV_DATA: data_dir(), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out")], env=child, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    last = result.stdout.strip().splitlines()[-1]
    assert last == "error: torch sees no CUDA device; this is no GPU machine (use --rehearse OUTDIR on a CPU)"
    assert json.loads((tmp_path / "out" / "preflight.json").read_text())["torch_sees_cuda"] is False
