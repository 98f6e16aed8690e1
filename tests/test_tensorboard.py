"""`train --tensorboard DIR`: per-epoch scalars both twins write with TensorBoard's own framework-free writer.

The event files are read back with TensorBoard's own reader (the plugin event accumulator behind
`tensorboard --logdir`), and every value is checked against METRICS.json, which the same loop wrote.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from clitools import assert_ok, assert_one_error_line, cli, needs_data

from fashion_common import tensorboard
from fashion_common.config import TrainConfig, tutorial_config

REPO = Path(__file__).resolve().parent.parent
EXPECTED_TAGS = {
    "loss/train",
    "loss/test",
    "loss/val",
    "accuracy/train",
    "accuracy/test",
    "accuracy/val",
    "learning_rate",
    "time/epoch_seconds",
}


def read_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard's scalars dashboard sees the run (its plugin event accumulator)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing import plugin_event_accumulator
    from tensorboard.util import tensor_util

    accumulator = plugin_event_accumulator.EventAccumulator(str(run_dir))
    accumulator.Reload()
    tags = accumulator.PluginTagToContent("scalars")  # what the scalars dashboard lists
    return {
        tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in accumulator.Tensors(tag)]
        for tag in tags
    }


# ----------------------------------------------------------------------------- the scalars


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_learning_rate_matches_the_flax_twins_own_schedule_at_every_update(schedule):
    from fashion_flax.train import make_schedule  # optax's schedule object, the one the twin trains with

    config = TrainConfig(schedule=schedule, lr=5e-4)
    total = 937 * 3
    twin_schedule = make_schedule(config, total)
    for step in [0, 1, 936, 937, 1405, total - 1, total]:
        expected = float(twin_schedule(step))
        # optax computes in float32: its cos is off by ~6e-8 absolute, i.e. lr * 3e-8; one step off mid-run moves
        # the rate by lr * pi / (2 * total) = lr * 5.6e-4, far outside lr * 1e-6.
        assert tensorboard.learning_rate(config.to_dict(), step, total) == pytest.approx(
            expected, rel=0, abs=config.lr * 1e-6
        )


def test_epoch_scalars_carry_every_metric_of_the_row_and_the_rate_of_the_epochs_last_update():
    config = tutorial_config(epochs=4, schedule="cosine").to_dict()
    row = {
        "epoch": 2,
        "train_loss": 0.9,
        "train_accuracy": 0.7,
        "test_loss": 1.1,
        "test_accuracy": 0.6,
        "epoch_seconds": 3.5,
    }
    scalars = tensorboard.epoch_scalars({"epoch": 2, "step": 20, "config": config, "history": [{}, row]})
    lr = 1e-3 * 0.5 * (1 + math.cos(math.pi * 19 / 40))  # update 19 of 40 (10 per epoch): epoch 2's last
    assert scalars == {
        "loss/train": 0.9,
        "accuracy/train": 0.7,
        "loss/test": 1.1,
        "accuracy/test": 0.6,
        "time/epoch_seconds": 3.5,
        "learning_rate": pytest.approx(lr, rel=1e-15),
    }


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_the_writer_imports_neither_torch_nor_jax(tmp_path):
    pytest.importorskip("tensorboard")
    code = (
        "import sys\n"
        "from fashion_common.tensorboard import EpochWriter\n"
        f"with EpochWriter({str(tmp_path)!r}, 'flax') as w:\n"
        "    w({'epoch': 1, 'step': 10, 'config': {'schedule': 'constant', 'lr': 0.1, 'epochs': 1},"
        " 'history': [{'train_loss': 1.0}]})\n"
        "print(sorted(m for m in ('torch', 'jax', 'tensorflow') if m in sys.modules))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert read_scalars(tmp_path / "flax") == {"loss/train": [(1, 1.0)], "learning_rate": [(1, pytest.approx(0.1))]}


def test_event_accumulator_scalars_reads_every_tag_the_writer_wrote(tmp_path):
    """The reader scripts use (`EventAccumulator(...).Scalars(tag)`) sees the scalars, not only the dashboard."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = {"schedule": "constant", "lr": 0.1, "epochs": 2}
    rows = [{"train_loss": 1.25, "test_accuracy": 0.5}, {"train_loss": 0.75, "test_accuracy": 0.625}]
    with tensorboard.EpochWriter(tmp_path, "nnx") as writer:
        for epoch in (1, 2):
            writer({"epoch": epoch, "step": 10 * epoch, "config": config, "history": rows[:epoch]})
    accumulator = EventAccumulator(str(tmp_path / "nnx"))
    accumulator.Reload()
    assert sorted(accumulator.Tags()["scalars"]) == ["accuracy/test", "learning_rate", "loss/train"]
    # The values are exact in float32 (1.25, 0.75, 0.5, 0.625), so equality is the check.
    assert [(s.step, s.value) for s in accumulator.Scalars("loss/train")] == [(1, 1.25), (2, 0.75)]
    assert [(s.step, s.value) for s in accumulator.Scalars("accuracy/test")] == [(1, 0.5), (2, 0.625)]
    assert [s.value for s in accumulator.Scalars("learning_rate")] == [pytest.approx(0.1, rel=1e-7)] * 2


# ----------------------------------------------------------------------------- the flag


@needs_data
@pytest.mark.parametrize("backend", ["torch", "flax"])
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_train_tensorboard_writes_event_files_tensorboard_lists_with_the_metrics_values(tmp_path, backend):
    pytest.importorskip("tensorboard")
    metrics_path, logdir = tmp_path / "METRICS.json", tmp_path / "tb"
    result = cli(
        "train", "--backend", backend, "--epochs", 2, "--limit-train", 1024, "--limit-test", 256, "--val-size", 256,
        "--out", tmp_path / "m.safetensors", "--metrics", metrics_path, "--tensorboard", logdir,
    )  # fmt: skip
    assert_ok(result)
    assert [p.name for p in logdir.iterdir()] == [backend]  # one run per twin: both twins can share DIR
    assert any(p.name.startswith("events.out.tfevents.") for p in (logdir / backend).iterdir())
    scalars = read_scalars(logdir / backend)
    assert set(scalars) == EXPECTED_TAGS
    metrics = json.loads(metrics_path.read_text())
    for key, tag in tensorboard.TAGS.items():
        # Event files store float32: the METRICS.json value rounded to float32, exactly.
        expected = [(row["epoch"], float(np.float32(row[key]))) for row in metrics["epochs"]]
        assert scalars[tag] == expected, tag
    steps_per_epoch = (1024 - 256) // 64  # the validation images leave the training set
    rates = [tensorboard.learning_rate(metrics["config"], e * steps_per_epoch - 1, 2 * steps_per_epoch) for e in (1, 2)]
    assert scalars["learning_rate"] == [(1, float(np.float32(rates[0]))), (2, float(np.float32(rates[1])))]
    assert rates[1] < rates[0] < 5e-4  # cosine decay from the default peak rate


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_tensorboard_flag_without_the_extra_is_one_error_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(tensorboard, "available", lambda: False)
    result = cli(
        "train", "--backend", "flax", "--dry-run", "--out", tmp_path / "m.safetensors", "--tensorboard", tmp_path
    )
    assert_one_error_line(result, "argument --tensorboard", "pip install 'fashion-twins[tensorboard]'")
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_tensorboard_dir_that_is_a_file_is_refused_before_training(tmp_path):
    pytest.importorskip("tensorboard")
    (tmp_path / "tb").write_text("")
    result = cli(
        "train", "--backend", "flax", "--dry-run", "--out", tmp_path / "m.safetensors", "--tensorboard", tmp_path / "tb"
    )
    assert_one_error_line(result, "--tensorboard", "is a file; give a folder")
    assert not (tmp_path / "m.safetensors").exists()


def _counters(epoch: int) -> dict:
    row = {"epoch": epoch, "train_loss": 0.5, "test_loss": 0.6, "test_accuracy": 0.8, "epoch_seconds": 1.0}
    return {
        "epoch": epoch,
        "step": 10 * epoch,
        "config": {"schedule": "constant", "lr": 1e-3, "epochs": 3},
        "history": [row],
    }


def test_a_full_disk_under_the_event_writer_is_one_write_error_naming_the_file_and_the_flag_from_no_thread(tmp_path):
    pytest.importorskip("tensorboard")
    import threading

    from fashion_common.errors import WriteError

    threads = threading.active_count()
    writer = tensorboard.EpochWriter(tmp_path, "nnx")
    writer(_counters(1))
    assert threading.active_count() == threads  # written in the caller's thread: no writer thread to print a traceback
    writer._file.close()
    writer._file = open("/dev/full", "wb")  # noqa: SIM115 (every flush: ENOSPC, from the kernel itself)
    with pytest.raises(WriteError) as info:
        writer(_counters(2))
    assert str(info.value) == f"argument --tensorboard: cannot write {writer.path}: No space left on device"
    assert info.value.errno == 28
    writer.close()  # after the failure there is nothing left to close, and no second error
    assert read_scalars(tmp_path / "nnx")["loss/train"] == [(1, 0.5)]  # what was written before stays readable


def _tiny_tmpfs(folder: Path, size: str):
    """Mount a tmpfs of `size` on `folder` (root only): a real full disk for a real process; None where it cannot."""
    folder.mkdir()
    if os.geteuid() != 0:
        return None
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return folder if done.returncode == 0 else None


@needs_data
@pytest.mark.slow  # one real training process per twin, on a real 4 KiB tmpfs: ~15 s each on 2 busy cores
@pytest.mark.parametrize("backend", ["torch", "flax", "nnx"])
def test_tensorboard_on_a_full_disk_is_one_line_naming_the_file_and_the_flag_and_the_last_checkpoint_stays(
    tmp_path, backend
):
    pytest.importorskip("tensorboard")
    logdir = _tiny_tmpfs(tmp_path / "tb", "4k")  # one page: ~800 bytes of scalars an epoch fill it in a few epochs
    if logdir is None:
        pytest.skip("needs root to mount a 4 KiB tmpfs (the full disk)")
    try:
        out = tmp_path / "m.safetensors"
        proc = subprocess.run(
            [sys.executable, "-m", "fashion_twins", "train", "--backend", backend, "--out", str(out), "--quiet"]
            + ["--epochs", "30", "--limit-train", "256", "--limit-test", "64", "--tensorboard", str(logdir)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
    finally:
        subprocess.run(["umount", str(logdir)], check=True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]  # no "Exception in thread", no traceback
    assert lines[0].startswith(f"error: argument --tensorboard: cannot write {logdir / backend}/events.out.tfevents.")
    assert lines[0].endswith(": No space left on device")
    last = int(proc.stdout.strip().splitlines()[-1].split("epoch")[1].split("/")[0])  # "[torch] epoch   9/30 ..."
    assert 1 <= last < 30
    from fashion_common import checkpoint as canonical

    _, _, counters = canonical.read_checkpoint(out)  # whole, digest-verified, and the epoch the disk filled in
    assert counters["epoch"] == last
