"""A crash at any moment of a checkpoint write loses at most the running epoch, and never mixes two runs.

The fault-injection proof runs tests/crash_driver.py: it kills a trainer with SIGKILL at each fsync
and rename of two epochs' writes, resumes each time, and compares the final weights, bit for bit,
with the run that was never interrupted.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from twin_data import real_data

from fashion_common import checkpoint as canonical
from fashion_common.config import TrainConfig
from fashion_common.errors import CheckpointError

TESTS = Path(__file__).resolve().parent
# Every test here forks a driver process (killed at a write, then resumed): the slow tier.
pytestmark = pytest.mark.slow

# Per epoch the loop writes 3 files (sidecar, weights, metrics), each with 3 durability points:
# fsync of the temp, the rename, fsync of the folder.
POINTS_PER_EPOCH = 3 * 3


def _run_driver(backend: str, work: Path, epochs: int) -> dict:
    # One OpenMP thread: the driver forks after importing torch, and a forked child must not inherit a thread pool.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", str(TESTS.parent))}
    proc = subprocess.run(
        [sys.executable, str(TESTS / "crash_driver.py"), backend, str(work), str(epochs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.data
@pytest.mark.parametrize(
    "backend",
    [
        "torch",  # 37 forked runs of 2 x 4 steps: ~30 s on a busy 2-core box
        pytest.param("flax", marks=pytest.mark.slow),  # each child compiles its scan (a shared disk cache helps)
    ],
)
def test_a_run_killed_at_every_fsync_and_rename_of_two_epochs_resumes_to_the_uninterrupted_weights(backend, tmp_path):
    real_data()  # skip where the real set is absent
    result = _run_driver(backend, tmp_path, epochs=2)
    trials = result["trials"]
    assert result["points"] == 2 * POINTS_PER_EPOCH
    assert [t["kill_at"] for t in trials] == result["events"]
    assert result["events"][:3] == [
        "fsync m.state.safetensors",
        "rename m.state.safetensors",
        "fsync-dir m.state.safetensors",
    ]
    assert all(t["killed"] == ["signal", 9] for t in trials)  # every run really died at its point
    assert all(t["finished"] == ["exit", 0] for t in trials), [t for t in trials if t["finished"] != ["exit", 0]]
    # Killed before the first sidecar's rename: nothing to resume, a fresh run. From the rename on,
    # the sidecar on disk holds the epoch just finished, even where the weights file does not yet.
    assert [t["epoch_on_disk"] for t in trials] == [0, 0] + [1] * 9 + [2] * 7
    assert [t["kill_at"] for t in trials if not t["equal"]] == []


# ----------------------------------------------------------------------------- in-process pair checks


def _config(**overrides) -> TrainConfig:
    base = TrainConfig(epochs=2, batch_size=32, optimizer="adamw", lr=2e-3, limit_train=96, limit_test=64, device="cpu")
    return base.replace(**overrides)


class Stop(Exception):
    """Ends a run after an epoch's checkpoint was written, as a kill then would."""


def _train(backend, config, out, resume=None, stop_after=None):
    train = importlib.import_module(f"fashion_{backend}.train")

    def log(line):
        if stop_after is not None and f"epoch {stop_after:>3}/" in line:
            raise Stop(line)

    try:
        train.train_and_evaluate(config, real_data(), out=out, resume=resume, quiet=True, log=log)
    except Stop:
        pass


@pytest.mark.data
@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_weights_of_one_run_and_a_sidecar_of_another_at_the_same_step_are_refused_naming_both(backend, tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    _train(backend, _config(seed=1), a, stop_after=1)
    _train(backend, _config(seed=2), b, stop_after=1)
    canonical.train_state_path(a).write_bytes(canonical.train_state_path(b).read_bytes())  # seed 2's sidecar
    with pytest.raises(CheckpointError, match="are files of two different runs") as e:
        _train(backend, _config(seed=2), a, resume=a)
    assert str(a) in str(e.value) and str(canonical.train_state_path(a)) in str(e.value)


@pytest.mark.data
def test_a_sidecar_whose_weights_file_is_missing_resumes_from_the_weights_it_holds(tmp_path):
    whole, cut = tmp_path / "whole.safetensors", tmp_path / "cut.safetensors"
    _train("torch", _config(epochs=2), whole)
    _train("torch", _config(), cut, stop_after=1)
    cut.unlink()  # as if killed between the first sidecar's rename and the weights'
    _train("torch", _config(), cut, resume=cut)
    want, got = canonical.read_state(whole)[0], canonical.read_state(cut)[0]
    assert all(np.array_equal(want[k], got[k]) for k in want)
    assert canonical.read_checkpoint(cut)[2]["epoch"] == 2


@pytest.mark.data
def test_a_finished_run_whose_last_weights_write_was_killed_is_completed_by_its_resume(tmp_path):
    whole, cut = tmp_path / "whole.safetensors", tmp_path / "cut.safetensors"
    _train("torch", _config(epochs=2), whole)
    _train("torch", _config(), cut, stop_after=1)
    first_weights = cut.read_bytes()
    _train("torch", _config(epochs=2), cut, resume=cut)
    cut.write_bytes(first_weights)  # epoch 2's sidecar beside epoch 1's weights: killed between the renames
    _train("torch", _config(epochs=2), cut, resume=cut)  # nothing to train, but the weights catch up
    want, got = canonical.read_state(whole)[0], canonical.read_state(cut)[0]
    assert all(np.array_equal(want[k], got[k]) for k in want)
