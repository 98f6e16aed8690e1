"""One run writes a checkpoint at a time; readers always see a whole file.

A run holds an flock on `<name>.lock` beside its --out (fashion_common.checkpoint.RunLock) for as
long as it runs; the OS drops it when the process dies, so a kill never leaves a stale lock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from clitools import assert_ok, assert_one_error_line, cli, needs_data

from fashion_common import checkpoint as canonical
from fashion_common.errors import CheckpointError
from fashion_common.spec import DEFAULT_SPEC, checkpoint_shapes


def test_a_second_lock_on_one_checkpoint_is_refused_naming_the_holder_until_the_first_is_released(tmp_path):
    path = tmp_path / "m.safetensors"
    first = canonical.RunLock(path)
    assert canonical.lock_path(path) == tmp_path / "m.lock"
    with pytest.raises(CheckpointError, match=rf"being written by another run \(pid {os.getpid()},"):
        canonical.RunLock(path)
    first.release()
    with canonical.RunLock(path):  # free again
        pass


def _wait_for(predicate, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@needs_data
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_a_second_train_on_the_same_out_is_refused_with_one_line_naming_the_first_process(tmp_path):
    out = tmp_path / "m.safetensors"
    # The first run: long enough (100 tiny epochs) to be running when the second starts.
    first = subprocess.Popen(
        [sys.executable, "-m", "fashion_twins", "train", "--backend", "torch", "--out", str(out), "--quiet"]
        + ["--epochs", "100", "--limit-train", "64", "--batch-size", "32", "--limit-test", "64", "--seed", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lock = canonical.lock_path(out)
        _wait_for(lambda: lock.exists() and lock.read_text().strip() == str(first.pid))
        second = cli("train", "--backend", "torch", "--out", out, "--epochs", 1, "--limit-train", 64, "--seed", 2)
        assert_one_error_line(second, str(out), f"being written by another run (pid {first.pid},")
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(60)
    # SIGKILL ran no cleanup, yet the OS released the lock: the next run on the same --out goes ahead.
    third = cli("train", "--backend", "torch", "--out", out, "--epochs", 1, "--limit-train", 64, "--limit-test", 64)
    assert_ok(third)
    assert canonical.read_checkpoint(out)[2]["epoch"] == 1


def test_readers_see_a_whole_checkpoint_at_every_moment_of_a_rewrite(tmp_path):
    path = tmp_path / "m.safetensors"
    rng = np.random.default_rng(0)
    versions = [
        {k: rng.standard_normal(s).astype(np.float32) for k, s in checkpoint_shapes(DEFAULT_SPEC).items()}
        for _ in range(2)
    ]
    canonical.write_state(path, versions[0], DEFAULT_SPEC)
    stop, writes = threading.Event(), [0]

    def writer():
        while not stop.is_set():
            canonical.write_state(path, versions[writes[0] % 2], DEFAULT_SPEC)
            writes[0] += 1

    thread = threading.Thread(target=writer)
    thread.start()
    seen = set()
    try:
        for _ in range(60):
            state, _ = canonical.read_state(path)  # a partial file would fail its digest or its parse
            match = [i for i, v in enumerate(versions) if all(np.array_equal(state[k], v[k]) for k in v)]
            assert len(match) == 1
            seen.add(match[0])
    finally:
        stop.set()
        thread.join()
    assert writes[0] > 5 and seen == {0, 1}
