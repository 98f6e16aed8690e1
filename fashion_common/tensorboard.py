"""Per-epoch scalars for TensorBoard, written the same way for both twins.

    fashion-twins train --backend torch --tensorboard runs/   # runs/torch/events.out.tfevents.*
    fashion-twins train --backend flax  --tensorboard runs/   # runs/flax/...: one run per twin, the same tags
    tensorboard --logdir runs/

The writer is TensorBoard's own framework-free one (its event file writer and protos: neither torch
nor TensorFlow), so the flax twin writes event files without importing torch
(`torch.utils.tensorboard` would, and it needs the same `tensorboard` package anyway). The package
is an optional extra: pip install 'fashion-twins[tensorboard]'.
"""

from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path

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

    Called by the training loop with the epoch's counters; the x axis is the epoch number.
    """

    def __init__(self, logdir, backend: str):
        # the optional extra: only imported when asked for
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.run_dir = Path(logdir) / backend
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(self.run_dir))

    def __call__(self, counters: dict) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        # simple_value summaries, as torch.utils.tensorboard and tf.summary v1 write them: EventAccumulator's
        # Scalars() reads only these (tensorboard.summary.Writer's tensor summaries raise KeyError there), and the
        # scalars dashboard shows them alike. The value is stored as float32.
        values = [Summary.Value(tag=tag, simple_value=value) for tag, value in epoch_scalars(counters).items()]
        self._writer.add_event(Event(wall_time=time.time(), step=counters["epoch"], summary=Summary(value=values)))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
