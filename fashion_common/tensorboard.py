"""Per-epoch scalars for TensorBoard, written the same way for both twins.

    fashion-twins train --backend torch --tensorboard runs/   # runs/torch/events.out.tfevents.*
    fashion-twins train --backend flax  --tensorboard runs/   # runs/flax/...: one run per twin, the same tags
    tensorboard --logdir runs/

The records are TensorBoard's own framework-free ones (its Event protos and RecordWriter framing:
neither torch nor TensorFlow), written synchronously by EpochWriter, so the flax twin writes event files
without importing torch (`torch.utils.tensorboard` would, and it needs the same `tensorboard` package
anyway). The package is an optional extra: pip install 'fashion-twins[tensorboard]'.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import math
import os
import socket
import time
from pathlib import Path

from .errors import WriteError

INSTALL_HINT = "pip install 'fashion-twins[tensorboard]'"

# Row key of one epoch (METRICS.json's "epochs") -> TensorBoard tag. Grouped by prefix, so the twins' runs
# and the train/test/val curves of one quantity share a chart.
TAGS = {
    "train_loss": "loss/train",
    "test_loss": "loss/test",
    "val_loss": "loss/val",
    "train_accuracy": "accuracy/train",
    "test_accuracy": "accuracy/test",
    "val_accuracy": "accuracy/val",
    "epoch_seconds": "time/epoch_seconds",
}
LEARNING_RATE_TAG = "learning_rate"
_FILE_NUMBER = itertools.count()  # two writers of one process in one second get two files


def available() -> bool:
    """Whether the `tensorboard` package (the optional extra) is installed; nothing is imported."""
    return importlib.util.find_spec("tensorboard") is not None


def learning_rate(config: dict, step: int, total_steps: int) -> float:
    """The rate of update `step` (0-based) of the run, by the twins' shared schedule rule.

    constant: lr; cosine: lr * (1 + cos(pi * step / total_steps)) / 2, decaying to 0 at total_steps, as
    torch's CosineAnnealingLR(T_max=total_steps, eta_min=0) and optax.cosine_decay_schedule(lr, total_steps).
    """
    if config["schedule"] == "constant":
        return float(config["lr"])
    return float(config["lr"]) * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


def epoch_scalars(counters: dict) -> dict[str, float]:
    """tag -> value for the epoch the loop just finished; `counters` is what it saves beside the checkpoint.

    The learning rate is that of the epoch's last update (the one that made the weights evaluated).
    """
    row = counters["history"][-1]
    scalars = {tag: float(row[key]) for key, tag in TAGS.items() if key in row}
    steps_per_epoch = counters["step"] // counters["epoch"]
    total_steps = steps_per_epoch * counters["config"]["epochs"]
    scalars[LEARNING_RATE_TAG] = learning_rate(counters["config"], counters["step"] - 1, total_steps)
    return scalars


class EpochWriter:
    """Writes each finished epoch's scalars into LOGDIR/<backend>/, flushed at once (a live TensorBoard sees them).

    Called by the training loop with the epoch's counters, after the epoch's checkpoint is on disk; the x
    axis is the epoch number. The records are TensorBoard's own (its RecordWriter and Event protos), but
    written here, in the caller's thread: TensorBoard's Writer writes from a thread of its own, which on a
    full disk prints its traceback and leaves an OSError naming no file. Here any OSError is one
    WriteError naming the file and the flag, and the checkpoint the loop wrote before stays as it is.
    """

    def __init__(self, logdir, backend: str, flag: str = "--tensorboard"):
        self.run_dir, self.flag = Path(logdir) / backend, flag
        # events.out.tfevents.<time>.<host>.<pid>.<n>: the name TensorBoard's own writer gives, which its reader lists
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_FILE_NUMBER)}"
        self.path, self._file = self.run_dir / name, None
        with self._named():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "wb")  # noqa: SIM115 (closed by close(); written every epoch)
        from tensorboard.compat.proto import event_pb2  # the optional extra: only imported when asked for

        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def __call__(self, counters: dict) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        # simple_value summaries, as torch.utils.tensorboard and tf.summary v1 write them: EventAccumulator's
        # Scalars() reads only these (tensor summaries with scalar metadata raise KeyError there), and the
        # scalars dashboard shows them alike. The value is stored as float32.
        values = [
            summary_pb2.Summary.Value(tag=tag, simple_value=value) for tag, value in epoch_scalars(counters).items()
        ]
        self._write(
            event_pb2.Event(
                wall_time=time.time(), step=int(counters["epoch"]), summary=summary_pb2.Summary(value=values)
            )
        )

    def _write(self, event) -> None:
        """One record, flushed to the file (TensorBoard's framing: length, its crc, the bytes, their crc)."""
        from tensorboard.summary.writer.record_writer import RecordWriter

        if self._file is None:
            raise WriteError(f"argument {self.flag}: {self.path} is closed after an earlier failure")
        with self._named():
            RecordWriter(self._file).write(event.SerializeToString())
            self._file.flush()

    @contextlib.contextmanager
    def _named(self):
        """An OSError inside (ENOSPC, EDQUOT, EIO): one WriteError naming the file and the flag; the file is dropped."""
        try:
            yield
        except OSError as e:
            self._abandon()
            error = WriteError(f"argument {self.flag}: cannot write {self.path}: {e.strerror or e}")
            error.errno = e.errno
            raise error from None

    def _abandon(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError:
                pass  # its buffer could not be written either: the error already raised names the file

    def close(self) -> None:
        """Close the event file; after a failed write there is nothing left to close."""
        file, self._file = self._file, None
        if file is not None:
            with self._named():
                file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
