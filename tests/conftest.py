"""Shared fixtures: the `backend` fixture that runs a test once per twin, and pinned matmul precision."""

from __future__ import annotations

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

# Two simulated CPU devices for the in-process mesh tests (tests/test_blind_spots.py): JAX reads the count
# once, when its backend starts, so it is set here, before any test starts it. The default device stays the
# first, so one-device tests run as before; subprocesses are untouched (their XLA_FLAGS are their own).
MESH_CPU_DEVICES = 2
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):  # a user's own count wins
    import jax

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
