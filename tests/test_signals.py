"""Ctrl-C (a real SIGINT) during training stops at a step boundary: exit 130, one line, the last checkpoint whole.

The command line routes SIGINT to a flag (fashion_common.interrupt); the loops check it between
compiled flax scans and between torch steps, so XLA is never interrupted mid-computation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from clitools import needs_data

from fashion_common import checkpoint as canonical
from fashion_common import interrupt
from fashion_common.spec import DEFAULT_SPEC, checkpoint_shapes
from fashion_twins.cli.common import check_xla_flags


def _interrupted_run(backend: str, out) -> tuple[int, str, float]:
    """Start a long quiet run, SIGINT it once its first epoch is saved; (exit code, stderr, seconds to exit)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fashion_twins", "train", "--backend", backend, "--out", str(out), "--quiet"]
        + ["--epochs", "50", "--limit-train", "9600", "--batch-size", "32", "--limit-test", "100"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not out.exists():  # epoch 1 saved: the run is inside epoch 2's compiled steps
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.05)
        time.sleep(0.2)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(120)
        return code, proc.stderr.read(), time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@needs_data
@pytest.mark.parametrize("backend", ["torch", "flax"])
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_ctrl_c_in_an_epoch_exits_130_with_one_line_and_leaves_the_last_checkpoint_whole(backend, tmp_path):
    tries = 3 if backend == "flax" else 1  # flax used to die of SIGSEGV/SIGABRT in about half the tries
    for attempt in range(tries):
        out = tmp_path / f"m{attempt}.safetensors"
        code, stderr, seconds = _interrupted_run(backend, out)
        assert (code, stderr.strip().splitlines()) == (130, ["error: interrupted"])
        # 300 steps an epoch in 15 slices of 20: the stop comes within a slice (well under a second
        # on an idle 2-core CPU; the bound leaves room for a busy one)
        assert seconds < 10
        assert canonical.read_checkpoint(out)[2]["epoch"] >= 1


def test_the_flag_raises_keyboard_interrupt_only_at_a_check_and_a_second_ctrl_c_at_once():
    interrupt.install()
    try:
        interrupt.check()  # nothing pressed: no-op
        os.kill(os.getpid(), signal.SIGINT)  # handled in the main thread before the next bytecode
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the second: raised by the handler itself
            time.sleep(1)
    finally:
        interrupt.uninstall()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# evaluate starts JAX's backends up front; a data-parallel train starts them only after
# jax.distributed.initialize, in another place, which must say the same one line.
JAX_COMMANDS = {
    "evaluate": lambda path, out: ["evaluate", "--backend", "flax", str(path), "--device", "cpu"],
    "train --devices 2": lambda path, out: [
        *("train", "--backend", "flax", "--devices", "2", "--limit-train", "256", "--epochs", "1", "--out", str(out))
    ],
}


@pytest.mark.parametrize("command", list(JAX_COMMANDS))
@pytest.mark.parametrize("platform", ["tpu", "cuda"])  # a RuntimeError, and a bare AssertionError, from JAX
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_a_jax_platforms_naming_a_missing_platform_is_one_line_naming_the_variable(tmp_path, platform, command):
    path = tmp_path / "m.safetensors"
    canonical.write_state(path, {k: np.zeros(s, np.float32) for k, s in checkpoint_shapes(DEFAULT_SPEC).items()})
    env = {**os.environ, "JAX_PLATFORMS": platform}
    out = tmp_path / "run" / "model.safetensors"
    out.parent.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "fashion_twins", *JAX_COMMANDS[command](path, out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"error: JAX_PLATFORMS='{platform}' names a platform JAX cannot start on this machine")
    assert [p.name for p in out.parent.iterdir() if p.suffix != ".lock"] == []  # nothing but the run's lock file


@pytest.mark.slow  # five fresh Python processes, four of them probing XLA: ~20 s on 2 busy cores
def test_a_junk_xla_flags_is_one_line_naming_the_variable_for_every_command_that_starts_jax(tmp_path, monkeypatch):
    """XLA aborts on a flag it does not know (a fatal log line, exit 1): each JAX command says it first, exit 2."""
    path = tmp_path / "m.safetensors"
    canonical.write_state(path, {k: np.zeros(s, np.float32) for k, s in checkpoint_shapes(DEFAULT_SPEC).items()})
    out = tmp_path / "run" / "model.safetensors"
    out.parent.mkdir()
    env = {**os.environ, "XLA_FLAGS": "--no_such_flag"}
    commands = {
        "evaluate flax": ["evaluate", "--backend", "flax", str(path)],
        "evaluate nnx": ["evaluate", "--backend", "nnx", str(path)],
        "train flax --devices 2": [
            *(
                "train",
                "--backend",
                "flax",
                "--devices",
                "2",
                "--limit-train",
                "256",
                "--epochs",
                "1",
                "--out",
                str(out),
            )
        ],
        "lockstep": ["lockstep", "--steps", "1"],
        "evaluate torch": ["evaluate", "--backend", "torch", str(tmp_path / "missing.safetensors")],
    }
    for name, argv in commands.items():
        proc = subprocess.run(
            [sys.executable, "-m", "fashion_twins", *argv], capture_output=True, text=True, env=env, timeout=300
        )
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, (name, proc.stderr)
        if name == "evaluate torch":  # torch never starts XLA: the variable is none of its business
            assert lines[0] == f"error: checkpoint not found: {tmp_path / 'missing.safetensors'}"
        else:
            assert lines[0].startswith("error: XLA_FLAGS='--no_such_flag': XLA refuses it (Unknown flag in XLA_FLAGS")
    assert [p.name for p in out.parent.iterdir()] == []  # refused before the run took its lock
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")  # flags XLA knows pass the probe
    check_xla_flags()
