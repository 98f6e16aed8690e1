"""The epoch loop both twins run: logging, metrics JSON, checkpoints and resume, written once.

Each twin hands in a small `TwinOps` of its own framework's functions (init, one epoch,
evaluate, save, load); everything around them is the same code, so both twins log the same
lines, write the same METRICS.json and resume the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import platform
import time
from collections.abc import Callable

from .augment import shift_offsets
from .checkpoint import atomic_write_bytes, copy_checkpoint, new_run_id, read_train_state, train_state_path
from .config import TrainConfig
from .data import FashionData, batch_order
from .errors import CheckpointError, NonFiniteLossError
from .paths import check_output_file, same_file
from .spec import DEFAULT_SPEC, ModelSpec
from .split import split_validation
from .text import format_epoch_line


@dataclasses.dataclass
class TwinOps:
    """What a twin provides to the shared loop. `state` is the twin's own train state."""

    backend: str  # "torch" or "flax"
    init_state: Callable  # (config, spec, device, total_steps) -> state
    put_data: Callable  # (FashionData, device) -> data on the device (twin-specific)
    train_epoch: Callable  # (state, data, order (steps, B) int32, config, progress, shifts (steps, B, 2) int8 or None) -> (state, {"train_loss", "train_accuracy"})
    evaluate: Callable  # (state, data, config) -> {"test_loss", "test_accuracy"}
    save: Callable  # (state, path, metadata) -> None: weights + sidecar
    load: Callable  # (state, path) -> state with weights and optimizer restored
    device_name: Callable  # (device) -> str
    versions: Callable  # () -> {library: version}
    # Data-parallel runs (fashion_*/distributed.py): only the writer (rank/process 0) checks and writes
    # --out and --metrics; every rank reads a --resume checkpoint. train_epoch/evaluate reduce their metrics.
    is_writer: Callable[[], bool] = lambda: True


def epoch_shifts(config: TrainConfig, epoch: int, steps: int):
    """The shared (steps, B, 2) int8 shift offsets of one epoch, or None with augmentation off: what every epoch call passes."""
    if not config.augment_shift:
        return None
    return shift_offsets(config.seed, epoch, steps, config.batch_size, config.augment_shift)


def with_init(ops: TwinOps, create_train_state: Callable, init_from, spec: ModelSpec = DEFAULT_SPEC) -> TwinOps:
    """The twin's ops whose init_state starts from the weights in `init_from` (a canonical checkpoint) instead of the seed.

    The cross-framework proofs start both twins, whose seeded inits differ, from one file. None: `ops` unchanged.
    """
    if init_from is None:
        return ops
    from .checkpoint import read_state

    weights, _ = read_state(init_from, spec)
    return dataclasses.replace(ops, init_state=functools.partial(create_train_state, state_dict=weights))


def write_json_atomic(path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


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
                f"{path} was trained with {key}={saved.get(key)!r}, not {getattr(config, key)!r}; resume with the same value"
            )


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


def train_and_evaluate(
    ops: TwinOps,
    config: TrainConfig,
    data: FashionData,
    spec: ModelSpec = DEFAULT_SPEC,
    out: str | None = None,
    metrics_path: str | None = None,
    resume: str | None = None,
    quiet: bool = False,
    log: Callable[[str], None] = print,
    device=None,
):
    """Train for config.epochs, evaluating after each; checkpoint and metrics are rewritten atomically every epoch.

    Args:
      ops: the twin's functions.
      config: the shared flat config.
      data: uint8 Fashion-MNIST arrays (already limited if config.limit_* is set).
      out: checkpoint path (weights; optimizer state goes beside it); None writes none.
      metrics_path: METRICS.json path; None writes none.
      resume: a checkpoint written by this loop; training continues after its last epoch.
      quiet: no progress bars (the per-epoch lines are still logged).
    Returns:
      (state, metrics dict as written to METRICS.json).
    """
    if not ops.is_writer():  # the other ranks train and reduce metrics, but write nothing
        out = metrics_path = None
    # The command line's own checks (aliases too) ran already; these keep library callers from losing an epoch.
    check_output_file(out, "--out")
    check_output_file(metrics_path, "--metrics")
    data = data.limit(config.limit_train, config.limit_test)
    val_data = None
    if config.val_size:  # the held-out images leave the training set; the loop scores them each epoch
        data, val_data = split_validation(data, config.val_size)
    steps_per_epoch = config.steps_per_epoch(len(data.train_labels))
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {config.batch_size} is larger than the {len(data.train_labels)} training images")
    total_steps = steps_per_epoch * config.epochs
    state = ops.init_state(config, spec, device, total_steps)
    on_device = ops.put_data(data, device)
    on_device_val = None if val_data is None else ops.put_data(val_data, device)

    history, start_epoch, run_id = [], 1, new_run_id()
    if resume is not None:
        _, counters = read_train_state(resume)
        check_resume(resume, counters, ops.backend, config)
        state = ops.load(state, resume)
        history, start_epoch = counters["history"], counters["epoch"] + 1
        run_id = counters.get("run_id") or run_id  # a resumed run keeps its id (older sidecars have none)
        if out is not None and start_epoch > config.epochs:  # nothing to train: --out becomes the finished pair
            copy_checkpoint(resume, out)  # (also finishes a last write killed between the sidecar and the weights)
    kept = out if None not in (resume, out) and same_file(resume, out) else None  # this run's file: its last good epoch

    metrics = {
        "backend": ops.backend,
        "device": ops.device_name(device),
        "platform": platform.platform(),
        "versions": ops.versions(),
        "config": config.to_dict(),
        "spec": spec.to_metadata(),
        "num_train": int(len(data.train_labels)),
        "num_test": int(len(data.test_labels)),
        "num_val": 0 if val_data is None else int(len(val_data.test_labels)),
        "data_source": data.source,
        "epochs": history,
    }
    for epoch in range(start_epoch, config.epochs + 1):
        order = batch_order(config.seed, epoch, len(data.train_labels), config.batch_size)
        start = time.perf_counter()
        progress = None if quiet else _progress(ops.backend, epoch, config.epochs, steps_per_epoch)
        shifts = epoch_shifts(config, epoch, steps_per_epoch)
        state, train_metrics = ops.train_epoch(state, on_device, order, config, progress, shifts)
        seconds = time.perf_counter() - start  # train_epoch returns host floats, so the device is done
        if progress is not None:
            progress.close()
        test_metrics = ops.evaluate(state, on_device, config)
        check_finite_losses(epoch, {**train_metrics, **test_metrics}, kept)  # before the save: keep the last good one
        row = {"epoch": epoch, **train_metrics, **test_metrics, "epoch_seconds": seconds}
        if on_device_val is not None:  # the twin's own evaluate, pointed at the validation split
            val = ops.evaluate(state, on_device_val, config)
            row.update(val_loss=val["test_loss"], val_accuracy=val["test_accuracy"])
        history.append(row)
        counters = {
            "backend": ops.backend,
            "epoch": epoch,
            "step": epoch * steps_per_epoch,
            "config": config.to_dict(),
            "history": history,
            "run_id": run_id,
        }
        if out is not None:  # saved before anything else can fail, so a crash loses at most the running epoch
            ops.save(state, out, counters)
            kept = out
        if metrics_path is not None:
            write_json_atomic(metrics_path, metrics)
        line = format_epoch_line(ops.backend, epoch, config.epochs, row)
        log(line if on_device_val is None else f"{line}  val_acc {100 * row['val_accuracy']:.2f}%")
    return state, metrics


def _progress(backend: str, epoch: int, epochs: int, steps: int):
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=f"[{backend}] epoch {epoch}/{epochs}", unit="step", leave=False, dynamic_ncols=True)


def progress_chunks(steps: int, progress) -> list:
    """Split an epoch's steps into slices; the bar advances once per slice (about 20 a epoch, or 1 if quiet).

    Both twins use the same slices, so their bars move alike; for flax each slice is one compiled scan.
    """
    if progress is None:
        return [slice(0, steps)]
    size = -(-steps // 20)  # equal slices but the last, so a compiled flax scan sees at most two lengths
    return [slice(a, min(a + size, steps)) for a in range(0, steps, size)]
