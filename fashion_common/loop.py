"""Plain helpers that every twin's `train_and_evaluate` calls, so all twins log, save and resume alike.

The loops themselves live in each twin's train.py (fashion_torch/train.py, fashion_flax/train.py)
and their data-parallel modules, and read top to bottom; what is framework-free and must be the
same in all of them is here: the run's data split and step counts, the epoch's batch order and
shifts, resume checks, the metrics document and its atomic write, the per-epoch row and log line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform

from .augment import shift_offsets
from .checkpoint import (
    atomic_write_bytes,
    copy_checkpoint,
    new_run_id,
    read_state,
    read_train_state,
    train_state_path,
    validate_training_state,
)
from .config import TrainConfig
from .data import FashionData, batch_order
from .errors import CheckpointError, NonFiniteLossError
from .paths import check_output_file, same_file
from .runtime import matmul_precision_report, thread_report
from .spec import ModelSpec
from .split import split_validation
from .terminal import progress_bars_wanted
from .text import format_epoch_line


@dataclasses.dataclass(frozen=True)
class Run:
    """The data one run trains on and its step counts, fixed before the first epoch."""

    data: FashionData  # the training images (validation split removed) and the test set
    val: FashionData | None  # the held-out validation images as a test set, or None
    steps_per_epoch: int
    total_steps: int
    out: str | None = None  # the checkpoint this run writes (None: none, or not this rank's to write)
    run_id: str = dataclasses.field(default_factory=new_run_id)  # in every pair the run writes; a resume keeps it
    first_epoch: int = 1  # the first epoch this process trains (after a resume: the one after the saved)
    resumed_in_place: bool = False  # resumed from `out` itself, so `out` holds this run's last good epoch

    @property
    def num_train(self) -> int:
        return int(len(self.data.train_labels))


# The most updates one run may take: optax's step counts (and the JAX twins' schedules) are int32.
MAX_STEPS = 2**31 - 1


def check_batch_fits(batch_size: int, num_train: int) -> None:
    """Refuse a batch larger than the training set (an epoch of it would have no step): what train and lockstep say."""
    if batch_size > num_train:
        raise ValueError(f"batch_size {batch_size} is larger than the {num_train} training images")


def prepare(config: TrainConfig, data: FashionData, out=None, metrics_path=None) -> Run:
    """Check the outputs, apply config.limit_* and the validation split, and count the steps.

    The command line's own checks ran already; these keep library callers from losing an epoch.
    """
    check_output_file(out, "--out")
    check_output_file(metrics_path, "--metrics")
    data = data.limit(config.limit_train, config.limit_test)
    val = None
    if config.val_size:  # the held-out images leave the training set; each epoch scores them
        data, val = split_validation(data, config.val_size)
    steps_per_epoch = config.steps_per_epoch(len(data.train_labels))
    check_batch_fits(config.batch_size, len(data.train_labels))
    if steps_per_epoch * config.epochs > MAX_STEPS:
        raise ValueError(
            f"epochs {config.epochs} x {steps_per_epoch} steps per epoch is {steps_per_epoch * config.epochs} steps; "
            f"at most {MAX_STEPS} (optax counts steps in int32), so fewer --epochs or a larger --batch-size"
        )
    return Run(data, val, steps_per_epoch, steps_per_epoch * config.epochs, None if out is None else str(out))


def init_weights(init_from, spec: ModelSpec) -> dict | None:
    """The canonical weights of `init_from` (e.g. the other twin's init), or None for the seeded init."""
    return None if init_from is None else read_state(init_from, spec)[0]


# Config keys that change the trajectory: a resumed run must use the same values, or it is another run.
RESUME_KEYS = (
    "batch_size",
    "optimizer",
    "lr",
    "momentum",
    "schedule",
    "weight_decay",
    "label_smoothing",
    "seed",
    "epochs",
    "limit_train",
    "augment_shift",
    "val_size",
)


def check_resume(path, counters: dict, backend: str, config: TrainConfig) -> None:
    """Refuse a resume that would not continue the saved run; the message names what differs."""
    saved_backend = counters.get("backend")
    if saved_backend != backend:
        raise CheckpointError(
            f"{train_state_path(path)} holds {saved_backend} optimizer state; resume it with --backend {saved_backend}"
        )
    saved = counters.get("config", {})
    for key in RESUME_KEYS:
        if saved.get(key) != getattr(config, key):
            raise CheckpointError(
                f"{path} was trained with {key}={saved.get(key)!r}, not {getattr(config, key)!r}; resume with the "
                "same value"
            )


def resume_point(
    path, backend: str, config: TrainConfig, run: Run, expected_slots: dict | None = None, scheduler: dict | None = None
) -> tuple[list, int, Run]:
    """(the saved per-epoch history, the first epoch still to train, the run with the saved run's id) of a checkpoint.

    The sidecar's counters and slots must fit this run (validate_training_state: expected_slots and
    scheduler are the twin's own, for this config). A run with every epoch done trains nothing; its
    --out becomes the finished pair (that also completes a last write killed between the two renames).
    """
    slots, counters = read_train_state(path)
    check_resume(path, counters, backend, config)
    validate_training_state(
        train_state_path(path), counters, config.epochs, run.steps_per_epoch, slots, expected_slots, scheduler
    )
    first_epoch = int(counters["epoch"]) + 1
    run = dataclasses.replace(
        run,
        run_id=counters.get("run_id") or run.run_id,  # sidecars written before runs had ids: a new one
        first_epoch=first_epoch,
        resumed_in_place=run.out is not None and same_file(path, run.out),
    )
    if run.out is not None and first_epoch > config.epochs:
        copy_checkpoint(path, run.out)
    return list(counters["history"]), first_epoch, run


def run_metrics(
    backend: str, device: str, versions: dict, config: TrainConfig, spec: ModelSpec, run: Run, history: list
) -> dict:
    """The METRICS.json document; `history` is the list the loop appends each epoch's row to."""
    return {
        "backend": backend,
        "device": device,
        "platform": platform.platform(),
        "versions": versions,
        "threads": thread_report(),  # --threads policy, torch's threads, load and usable cores at the start
        "matmul_precision_by_framework": matmul_precision_report(),  # as each loaded framework is set now
        "config": config.to_dict(),
        "matmul_precision": config.precision,  # what every twin's matmuls ran at (config.precision, set at the start)
        "spec": spec.to_dict(),
        "num_train": run.num_train,
        "num_test": int(len(run.data.test_labels)),
        "num_val": 0 if run.val is None else int(len(run.val.test_labels)),
        "data_source": run.data.source,
        "epochs": history,
    }


def epoch_shifts(config: TrainConfig, epoch: int, steps: int):
    """The shared (steps, B, 2) int8 shift offsets of one epoch, or None with augmentation off."""
    if not config.augment_shift:
        return None
    return shift_offsets(config.seed, epoch, steps, config.batch_size, config.augment_shift)


def epoch_batches(config: TrainConfig, epoch: int, run: Run):
    """(order (steps, B) int training indices, shifts (steps, B, 2) int8 or None): the same in every twin."""
    order = batch_order(config.seed, epoch, run.num_train, config.batch_size)
    return order, epoch_shifts(config, epoch, run.steps_per_epoch)


def check_finite_losses(epoch: int, metrics: dict, out=None) -> None:
    """Stop with NonFiniteLossError when the epoch's train or test loss is NaN or Inf.

    The test loss is checked too: a step that diverges last in the epoch leaves NaN weights behind
    a finite mean train loss, and the test loss of those weights is NaN.
    """
    for key in ("train_loss", "test_loss"):
        value = metrics.get(key)
        if value is not None and not math.isfinite(value):
            kept = f"; {out} was not overwritten, it keeps the last good epoch" if out is not None else ""
            raise NonFiniteLossError(
                f"epoch {epoch}: {key} is {value}, training diverged{kept}; lower --lr or check the data"
            )


def epoch_row(epoch: int, seconds: float, train: dict, test: dict, val: dict | None = None, run: Run | None = None):
    """One epoch's METRICS.json row; a non-finite loss stops the run here, before its checkpoint is written."""
    kept = None  # the message names --out only where it holds this run's last good epoch
    if run is not None and run.out is not None and (epoch > run.first_epoch or run.resumed_in_place):
        kept = run.out
    check_finite_losses(epoch, {**train, **test}, kept)
    row = {"epoch": epoch, **train, **test, "epoch_seconds": seconds}
    if val is not None:  # the twin's own evaluate, pointed at the validation split
        row.update(val_loss=val["test_loss"], val_accuracy=val["test_accuracy"])
    return row


def counters(backend: str, epoch: int, run: Run, config: TrainConfig, history: list) -> dict:
    """What the optimizer sidecar records beside the weights, for resume."""
    return {
        "backend": backend,
        "epoch": epoch,
        "step": epoch * run.steps_per_epoch,
        "config": config.to_dict(),
        "history": history,
        "run_id": run.run_id,
    }


def write_json_atomic(path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_metrics(path, metrics: dict) -> None:
    """Rewrite METRICS.json atomically (None: no file)."""
    if path is not None:
        write_json_atomic(path, metrics)


def epoch_line(backend: str, epoch: int, epochs: int, row: dict) -> str:
    """The per-epoch log line, the same in every twin."""
    line = format_epoch_line(backend, epoch, epochs, row)
    return line if "val_accuracy" not in row else f"{line}  val_acc {100 * row['val_accuracy']:.2f}%"


def progress_bar(backend: str, epoch: int, epochs: int, steps: int, quiet: bool = False):
    """A tqdm bar for one epoch, or None when quiet or where stderr is no terminal (a log gets the epoch lines)."""
    if quiet or not progress_bars_wanted():
        return None
    from tqdm.auto import tqdm  # only where a bar is drawn

    return tqdm(total=steps, desc=f"[{backend}] epoch {epoch}/{epochs}", unit="step", leave=False, dynamic_ncols=True)


def progress_chunks(steps: int, progress=None) -> list:
    """Split an epoch's steps into about 20 slices: the bar advances once per slice, Ctrl-C is honoured between them.

    Both twins use the same slices, so their bars move alike; for flax each slice is one compiled scan
    (the weights are bitwise the same however an epoch is sliced). Quiet runs are sliced too, so that
    fashion_common.interrupt.check() between slices stops a run within a slice, not an epoch.
    """
    size = -(-steps // 20) if steps else 1  # equal slices but the last, so a compiled scan sees at most two lengths
    return [slice(a, min(a + size, steps)) for a in range(0, steps, size)]
