"""The atomic writer, pinned by example: modes under the umask, temps of dead writers, failures that keep the
old file, and names too long for the temp file. Nothing written is ever lost half-way."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from backends import get_backend

from fashion_common import checkpoint as canonical
from fashion_common import loop
from fashion_common.errors import WriteError


def _good_state():
    return get_backend("torch").to_state_dict(get_backend("torch").init(seed=0))


# ----------------------------------------------------------------------------- the atomic writer: modes


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_file_gets_the_mode_plain_open_gives_under_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        canonical.atomic_write_bytes(tmp_path / "new.bin", b"x")
        with open(tmp_path / "plain.bin", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new.bin").st_mode) == mode
    assert stat.S_IMODE(os.stat(tmp_path / "plain.bin").st_mode) == mode  # the rule: what open() does


def test_replacing_a_file_keeps_its_mode(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    canonical.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_checkpoints_metrics_and_the_data_cache_all_follow_the_umask(tmp_path, backend):
    old = os.umask(0o022)
    try:
        backend.save(backend.init(seed=0), tmp_path / "m.safetensors")
        loop.write_json_atomic(tmp_path / "metrics.json", {"a": 1})
    finally:
        os.umask(old)
    for name in ("m.safetensors", "metrics.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name


# ----------------------------------------------------------------------------- the atomic writer: temp files


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped), so no process runs under it now."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_a_temp_left_by_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    path = tmp_path / "model.safetensors"
    dead = tmp_path / f".model.safetensors.{_dead_pid()}.0badc0de.tmp"  # what a kill -9 mid-write leaves
    dead.write_bytes(b"half a checkpoint")
    legacy = tmp_path / ".model.safetensors.k3j4h5g6.tmp"  # mkstemp's name, from before the pid was in it
    legacy.write_bytes(b"older")
    hour_ago = time.time() - 3600
    os.utime(legacy, (hour_ago, hour_ago))
    canonical.atomic_write_bytes(path, b"whole")
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_a_live_writers_temp_is_left_alone(tmp_path):
    path = tmp_path / "model.safetensors"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".model.safetensors.{sleeper.pid}.12345678.tmp"  # another process, mid-write
        live.write_bytes(b"in progress")
        canonical.atomic_write_bytes(path, b"whole")
        assert live.exists()
        other = tmp_path / f".other.safetensors.{_dead_pid()}.12345678.tmp"  # another target's temp: not ours to sweep
        other.write_bytes(b"x")
        canonical.atomic_write_bytes(path, b"again")
        assert live.exists() and other.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_a_writer_killed_mid_write_leaves_a_temp_that_the_next_write_removes(tmp_path):
    path = tmp_path / "model.safetensors"
    root = Path(__file__).resolve().parent.parent
    # A child that writes its temp file, then hangs before the rename; kill -9 it there.
    code = (
        f"import sys, time; sys.path.insert(0, {str(root)!r})\n"
        "from fashion_common import checkpoint as c\n"
        "c.os.replace = lambda *a: (print('written', flush=True), time.sleep(60))\n"
        f"c.atomic_write_bytes({str(path)!r}, b'x' * 4096)\n"
    )
    for _ in range(3):  # three killed writers: their temps must not accumulate
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "written"
        child.kill()
        child.wait()
    assert len(os.listdir(tmp_path)) == 3  # three orphaned temps, as a kill -9 leaves them
    canonical.atomic_write_bytes(path, b"whole")
    assert os.listdir(tmp_path) == ["model.safetensors"]
    assert path.read_bytes() == b"whole"


# ----------------------------------------------------------------------------- the atomic writer: failures


@pytest.mark.parametrize(
    "code, words", [(errno.ENOSPC, "No space left on device"), (errno.EACCES, "Permission denied")]
)
def test_a_failed_write_names_the_path_and_keeps_the_old_file(tmp_path, monkeypatch, backend, code, words):
    path = tmp_path / "model.safetensors"
    backend.save(backend.init(seed=0), path)
    before = path.read_bytes()
    real_fdopen = os.fdopen

    class FailingFile:
        def __init__(self, fd, mode):
            self._f = real_fdopen(fd, mode)

        def write(self, data):
            raise OSError(code, os.strerror(code))

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    monkeypatch.setattr(canonical.os, "fdopen", FailingFile)
    with pytest.raises(WriteError) as info:
        backend.save(backend.init(seed=1), path)
    assert str(info.value) == f"cannot write {path}: {words}"  # one line, the target's name (not the temp's)
    assert isinstance(info.value, OSError) and info.value.errno == code
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_an_output_name_whose_temp_file_would_be_too_long_is_refused_before_any_work(tmp_path):
    from fashion_common.checkpoint import atomic_write_bytes
    from fashion_common.paths import TEMP_NAME_EXTRA, PathError, check_output_file

    limit = os.pathconf(tmp_path, "PC_NAME_MAX")  # 255 on ext4, tmpfs, overlayfs
    fits = tmp_path / ("a" * (limit - TEMP_NAME_EXTRA))
    check_output_file(fits, "--out")
    with pytest.raises(PathError, match=rf"--out .*: the file name is {limit - TEMP_NAME_EXTRA + 1} bytes"):
        check_output_file(tmp_path / ("a" * (limit - TEMP_NAME_EXTRA + 1)), "--out")
    atomic_write_bytes(fits, b"ok")  # the longest name accepted really is writable: its temp name fits
    assert fits.read_bytes() == b"ok"
