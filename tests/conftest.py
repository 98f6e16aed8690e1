"""Shared fixtures: the `backend` fixture that runs a test once per twin, pinned matmul precision, and the one
place the gpu-marked tests take their device from (`gpu`, `gpu_figures`)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# `python -m pytest` from the root finds the packages through the cwd, an editable install through
# site-packages; this line covers plain `pytest` from elsewhere. tests/ itself is on the path for
# `import backends` (pytest's default rootdir-relative import mode puts it there too).
ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT, ROOT / "tests"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from backends import BACKEND_NAMES, get_backend  # noqa: E402

# A persistent XLA compilation cache for every child process the suite starts (CLI runs, mesh
# workers, crash drivers, JAX processes): a child's cold compile of the same scan is paid once per
# machine, not once per launch. The env reaches children through os.environ; this process turns the
# cache off just below, because tests here time cold compiles (benchmark's compile_s).
# FASHION_TWINS_TEST_JAX_CACHE moves it; the user's own JAX_COMPILATION_CACHE_DIR wins.
CHILD_JAX_CACHE = Path(
    os.environ.get("FASHION_TWINS_TEST_JAX_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fashion-twins" / "test-jax-cache"
)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(CHILD_JAX_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_enable_compilation_cache", False)  # this process compiles cold; its children read the cache

# Two simulated CPU devices for the in-process mesh tests (tests/test_blind_spots.py): JAX reads the count
# once, when its backend starts, so it is set here, before any test starts it. The default device stays the
# first, so one-device tests run as before; subprocesses are untouched (their XLA_FLAGS are their own).
MESH_CPU_DEVICES = 2
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):  # a user's own count wins
    jax.config.update("jax_num_cpu_devices", MESH_CPU_DEVICES)

# Hypothesis profiles for tests/test_properties.py. "fashion-twins" (the default) draws few examples,
# so the property file stays well under 30 s on a busy 2-core box, and draws the same ones on every
# run (derandomize): the suite's verdict must not change from one run or machine to the next. "deep"
# draws many, at random, for a longer hunt whose finds become fixes and regression tests:
# `python3 -m pytest tests/test_properties.py --hypothesis-profile=deep` or
# FASHION_TWINS_HYPOTHESIS=deep. No deadline: the first example of a test pays JAX's compile time.
settings.register_profile(
    "fashion-twins",
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "deep", max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile(
    os.environ.get("FASHION_TWINS_HYPOTHESIS", "fashion-twins")
)  # --hypothesis-profile, if given, wins


@pytest.fixture(scope="session", autouse=True)
def highest_matmul_precision():
    """Pin float32 matmuls for the whole session: TF32 off in torch, "highest" in JAX.

    On CPU neither library uses TF32, but pinning keeps the parity numbers meaning the same thing
    on a GPU host, and a test that changes the precision (test_gpu_parity) restores this.
    """
    for name in BACKEND_NAMES:
        get_backend(name).set_matmul_precision("highest")
    yield "highest"


@pytest.fixture(params=BACKEND_NAMES, scope="session")
def backend(request):
    """The twin under test, behind the numpy-in, numpy-out adapter of tests/backends.py."""
    return get_backend(request.param)


@pytest.fixture(scope="session")
def torch_backend():
    return get_backend("torch")


@pytest.fixture(scope="session")
def flax_backend():
    return get_backend("flax")


@pytest.fixture(params=("flax", "nnx"), scope="session")
def jax_backend(request):
    """Each JAX twin in turn (linen "flax", then "nnx"), for tests that hold a JAX twin against torch."""
    return get_backend(request.param)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The data cache in tmp_path; the env var and Debian's folder pointed away from the real machine's data."""
    from fashion_common import data as data_mod

    monkeypatch.setenv(data_mod.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.delenv(data_mod.ENV_DATA, raising=False)
    monkeypatch.setattr(data_mod, "DEBIAN_DIR", tmp_path / "no-debian")
    return tmp_path / "cache"


# ----------------------------------------------------------------------------- the fast tier stays in process
# tests/spawn_guard.py: a fast-tier test that starts a Python process fails, naming it (its hooks, imported here).
from spawn_guard import pytest_runtest_makereport, pytest_runtest_protocol  # noqa: E402, F401

# ----------------------------------------------------------------------------- the GPU tests' device, from one place

# The gpu-marked tests run on CUDA (torch) and the JAX GPU by default, and skip where either is missing.
# `--gpu-device cpu` (or FASHION_TWINS_GPU_REHEARSAL=1, what `scripts/device_check.sh --rehearse` sets)
# runs the same test bodies on the CPU, so the device check's plumbing is proven before its one shot.
REHEARSAL_ENV = "FASHION_TWINS_GPU_REHEARSAL"
# The figures the gpu tests measure (parity, lockstep, peak memory) go to this JSON file when it is set.
GPU_REPORT_ENV = "FASHION_TWINS_GPU_REPORT"
# The word a rehearsal skip starts with: scripts/device_check.sh allows these skips, and only in a rehearsal.
CUDA_ONLY = "CUDA only"


def pytest_addoption(parser):
    parser.addoption(
        "--gpu-device",
        choices=("cuda", "cpu"),
        default=None,
        help="where the gpu-marked tests run: cuda (torch on CUDA, JAX on its GPU; skipped when either is "
        f"missing) or cpu, the device check's rehearsal (default: cpu if ${REHEARSAL_ENV}=1, else cuda)",
    )


def gpu_missing() -> str:
    """'' when torch sees CUDA and JAX sees a GPU, else why the gpu tests cannot run on the GPU."""
    import torch

    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    import jax

    try:
        jax.devices("gpu")
    except RuntimeError:
        return "JAX sees no GPU device"
    return ""


@dataclasses.dataclass(frozen=True)
class GpuTarget:
    """Where the gpu tests run: torch's device ("cuda" or "cpu"), TrainConfig.device ("gpu" or "cpu")."""

    torch: str
    config: str

    @property
    def rehearsal(self) -> bool:
        return self.torch == "cpu"

    def jax_device(self):
        import jax

        return jax.devices("cpu" if self.rehearsal else "gpu")[0]

    def cuda_only(self, what: str) -> None:
        """Skip in the rehearsal with the reason; on the GPU this runs, and a skip there fails the device check."""
        if self.rehearsal:
            pytest.skip(f"{CUDA_ONLY}: {what}; skipped in the CPU rehearsal")


def gpu_device_choice(config) -> str:
    return config.getoption("--gpu-device") or ("cpu" if os.environ.get(REHEARSAL_ENV) == "1" else "cuda")


@pytest.fixture(scope="session")
def gpu(request) -> GpuTarget:
    """The device of every gpu-marked test; skips (the default suite on a CPU box) when CUDA is asked and absent."""
    if gpu_device_choice(request.config) == "cpu":
        return GpuTarget(torch="cpu", config="cpu")
    reason = gpu_missing()
    if reason:
        pytest.skip(f"{reason} (the CPU rehearsal: --gpu-device cpu)")
    return GpuTarget(torch="cuda", config="gpu")


class GpuFigures:
    """The gpu tests' figures, {section: {name: value}}, rewritten to $FASHION_TWINS_GPU_REPORT after each record.

    Rewritten each time, so a pytest killed by its timeout still leaves what was measured before.
    """

    def __init__(self, target: GpuTarget, path: str | None):
        import torch

        self.path = path
        self.data = {
            "rehearsal": target.rehearsal,
            "torch_device": torch.cuda.get_device_name(0) if target.torch == "cuda" else "cpu",
            "jax_device": str(target.jax_device()),
            "matmul_precision_default": "highest",
        }

    def record(self, section: str, name: str, value) -> None:
        self.data.setdefault(section, {})[name] = value
        print(f"[gpu figures] {section} / {name}: {json.dumps(value)}")
        if self.path:
            from fashion_common.loop import write_json_atomic

            write_json_atomic(self.path, self.data)


@pytest.fixture(scope="session")
def gpu_figures(gpu) -> GpuFigures:
    return GpuFigures(gpu, os.environ.get(GPU_REPORT_ENV))
