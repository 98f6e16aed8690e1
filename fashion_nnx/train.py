"""Training and evaluation for the NNX twin: an nnx.Optimizer over optax and a step under nnx.jit.

Mirrors fashion_flax/train.py (and fashion_torch/train.py) function for function. The whole set
lives as one uint8 array on the training device; a step gathers its batch by index and scales by
1/255 (what ToTensor does). The step is NNX's own idiom: `nnx.value_and_grad` of the loss over the
model, then `optimizer.update(model, grads)`. For speed an epoch slice is one compiled `lax.scan`,
as Flax's performance guide writes it: the model and optimizer are split once (`nnx.split`), the
scan carries plain arrays and merges them inside the compiled body, and the result is written back
with `nnx.update`, so NNX's Python graph walk runs once per epoch, never per step. The optimizer,
its schedule and the loss are the linen twin's own objects (one framework family, one copy). The
file ends with `train_and_evaluate`, the whole training loop, which mirrors the other twins'.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fashion_common import checkpoint as canonical
from fashion_common import interrupt, loop
from fashion_common.config import TrainConfig
from fashion_common.data import FashionData
from fashion_common.errors import CheckpointError
from fashion_common.spec import DEFAULT_SPEC, ModelSpec
from fashion_flax.train import (  # the JAX-level pieces both Flax twins share, one copy
    DeviceData,
    device_name,
    loss_fn,
    make_optimizer,
    make_schedule,
    put_data,
    versions,
)

from . import augment
from .checkpoint import from_state_dict, to_state_dict
from .model import NeuralNetwork, create_model, resolve_device, set_matmul_precision

__all__ = ["DeviceData", "loss_fn", "make_optimizer", "make_schedule", "put_data"]  # the linen twin's, re-exported

BACKEND = "nnx"


class TrainState(nnx.Module):
    """The model and its nnx.Optimizer: what linen's TrainState holds as params, opt_state and step.

    One graph node, so one nnx.split covers both (the optimizer's slots mirror the model's params).
    `step` counts updates, as torch's does; `params` is the model's param State.
    """

    def __init__(self, model: NeuralNetwork, tx: optax.GradientTransformation):
        self.model = model
        self.optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @property
    def step(self) -> int:
        return int(self.optimizer.step[...])

    @property
    def spec(self) -> ModelSpec:
        return self.model.spec

    @property
    def params(self) -> nnx.State:
        return nnx.state(self.model, nnx.Param)


# ----------------------------------------------------------------------------- state


def create_train_state(
    config: TrainConfig, spec: ModelSpec = DEFAULT_SPEC, device=None, total_steps: int = 1, state_dict=None
) -> TrainState:
    """A fresh model (seeded from config.seed, or the given canonical state_dict) and its optimizer."""
    device = resolve_device(config.device) if device is None else device
    model = create_model(spec, config.seed, device)
    if state_dict is not None:
        model = from_state_dict(state_dict, spec, device)
    tx = make_optimizer(config, total_steps)
    state = TrainState(model, tx)
    # Commit every array, the optimizer's counters included, to the device: an uncommitted step or
    # count would make the second epoch's scan compile again (the first returns them committed).
    nnx.update(state, jax.device_put(nnx.state(state), device))
    return state


# ----------------------------------------------------------------------------- one step


def _step(state: TrainState, images, labels, label_smoothing: float, shifts=None):
    """One update on uint8 images (B, 28, 28) -> (state, (loss, number correct)); grad, update and apply in one program.

    shifts: optional (B, 2) int offsets from fashion_common.augment, applied here on the device.
    """
    if shifts is not None:
        images = augment.shift_images(images, shifts)  # (B, 28, 28) uint8, zero fill
    x = augment.to_unit(images)  # (B, 28, 28) in [0, 1], as ToTensor: torch's x / 255 bit for bit

    def compute_loss(model):
        logits = model(x)  # (B, 10)
        return loss_fn(logits, labels, label_smoothing), logits

    (loss, logits), grads = nnx.value_and_grad(compute_loss, has_aux=True)(state.model)
    state.optimizer.update(state.model, grads)  # in place: the model's params and the optimizer's slots
    correct = (logits.argmax(1) == labels).sum()
    return state, (loss, correct)


train_step = nnx.jit(_step, static_argnames="label_smoothing")


def train_steps(state: TrainState, images, labels, order, label_smoothing: float, shifts=None):
    """Run one step per row of `order` (S, B) as one compiled lax.scan -> (state, loss sum, correct sum).

    shifts: optional (S, B, 2) offsets, scanned alongside `order` (None: no augmentation).
    """
    graphdef, arrays = nnx.split(state)
    arrays, loss_sum, correct_sum = _scan_steps(graphdef, arrays, images, labels, order, label_smoothing, shifts)
    nnx.update(state, arrays)
    return state, loss_sum, correct_sum


@functools.partial(jax.jit, static_argnames=("graphdef", "label_smoothing"), donate_argnames="arrays")
def _scan_steps(graphdef, arrays, images, labels, order, label_smoothing: float, shifts=None):
    """train_steps on the split state: `arrays` (model and optimizer State) in and out; merged at trace time only."""

    def body(carry, xs):
        arrays, loss_sum, correct_sum = carry
        idx, shift = xs
        state = nnx.merge(graphdef, arrays)  # traced once: no Python graph walk when the scan runs
        state, (loss, correct) = _step(state, images[idx], labels[idx], label_smoothing, shift)
        return (nnx.state(state), loss_sum + loss, correct_sum + correct), None

    (arrays, loss_sum, correct_sum), _ = jax.lax.scan(body, (arrays, jnp.float32(0), jnp.int32(0)), (order, shifts))
    return arrays, loss_sum, correct_sum


def train_epoch(
    state: TrainState, data: DeviceData, order: np.ndarray, config: TrainConfig, progress=None, shifts=None
):
    """One pass over `order` (steps, B) of training indices -> (state, {"train_loss", "train_accuracy"}).

    shifts: optional (steps, B, 2) int8 offsets (fashion_common.augment.shift_offsets).
    Unlike linen's, which calls train_steps per slice, the state is split once for the whole epoch
    and written back once at its end (about 20 slices with a progress bar, else one).
    """
    device = next(iter(data.train_images.devices()))
    order_d = jax.device_put(order, device)
    shifts_d = None if shifts is None else jax.device_put(shifts, device)
    graphdef, arrays = nnx.split(state)
    loss_sum, correct_sum, seen = 0.0, 0, 0
    for chunk in loop.progress_chunks(len(order), progress):
        interrupt.check()  # Ctrl-C stops here, between compiled scans, never inside one
        arrays, chunk_loss, chunk_correct = _scan_steps(
            graphdef,
            arrays,
            data.train_images,
            data.train_labels,
            order_d[chunk],
            config.label_smoothing,
            None if shifts_d is None else shifts_d[chunk],
        )
        seen += chunk.stop - chunk.start
        if progress is not None:  # one host sync per slice, not per step
            loss_sum, correct_sum = loss_sum + float(chunk_loss), correct_sum + int(chunk_correct)
            progress.update(chunk.stop - chunk.start)
            progress.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct_sum / (seen * order.shape[1]):.3f}")
        else:  # no bar: the sums stay on the device until the end
            loss_sum, correct_sum = loss_sum + chunk_loss, correct_sum + chunk_correct
    nnx.update(state, arrays)
    steps = len(order)
    return state, {"train_loss": float(loss_sum) / steps, "train_accuracy": int(correct_sum) / (steps * order.shape[1])}


# ----------------------------------------------------------------------------- evaluation


def evaluate(state: TrainState, data: DeviceData, config: TrainConfig) -> dict[str, float]:
    """The tutorial's test_loop over the whole test set -> {"test_loss", "test_accuracy"} (plain cross-entropy)."""
    return _evaluate(state.model, data.test_images, data.test_labels, config.eval_batch_size)


@functools.partial(jax.jit, static_argnames="graphdef")
def _eval_batch(graphdef, params, images, labels):
    """(loss sum, correct count) of one chunk of uint8 images (b, 28, 28)."""
    logits = nnx.merge(graphdef, params)(augment.to_unit(images))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()
    return loss, (logits.argmax(1) == labels).sum()


def _evaluate(model: NeuralNetwork, images, labels, batch_size: int) -> dict[str, float]:
    """Per-sample losses summed over chunks, then divided once: the mean over all images, whatever the chunk size."""
    graphdef, params = nnx.split(model)  # once, not per chunk
    loss_sum, correct = 0.0, 0
    for start in range(0, len(labels), batch_size):
        loss, c = _eval_batch(graphdef, params, images[start : start + batch_size], labels[start : start + batch_size])
        loss_sum, correct = loss_sum + float(loss), correct + int(c)
    return {"test_loss": loss_sum / len(labels), "test_accuracy": correct / len(labels)}


def evaluate_model(model: NeuralNetwork, images, labels, batch_size: int = 10_000) -> dict[str, float]:
    """Mean test loss and accuracy of a model (load_checkpoint's) on uint8 images (N, 28, 28) and labels (N,)."""
    return _evaluate(model, images, labels, batch_size)


def trained_model(state: TrainState) -> NeuralNetwork:
    """The model a train state holds, in the form load_checkpoint returns (an nnx.Module)."""
    return state.model


@functools.partial(jax.jit, static_argnames="graphdef")
def _probabilities(graphdef, params, images):
    return jax.nn.softmax(nnx.merge(graphdef, params)(images), axis=1)


def predict_proba(model: NeuralNetwork, images: np.ndarray) -> np.ndarray:
    """Float images (N, 28, 28) in [0, 1] -> softmax probabilities (N, 10) as numpy."""
    graphdef, params = nnx.split(model)
    return np.asarray(_probabilities(graphdef, params, jnp.asarray(images, jnp.float32)))


# ----------------------------------------------------------------------------- checkpoints with optimizer state


def _slot_key(path) -> str:
    """An optimizer state path as a sidecar key, e.g. '0/mu/linear_relu_stack/layers/0/kernel' (kernel layout)."""
    return "/".join(str(getattr(k, "key", k)) for k in path)


def _opt_slots(state: TrainState) -> nnx.State:
    """The optimizer's optax state (nnx.OptState leaves), without its step counter (the counters hold that)."""
    return nnx.state(state.optimizer, nnx.OptState)["opt_state"]


def resume_layout(state: TrainState) -> tuple[dict, None]:
    """What a sidecar of this run must hold (canonical.validate_training_state): slot -> (shape, dtype, is_count),
    read from this run's own fresh optax state; no scheduler state (optax's schedule count is a slot).

    Mirrors fashion_torch.train.resume_layout.
    """
    slots = {}
    for path_, leaf in nnx.to_flat_state(_opt_slots(state)):
        value, key = leaf[...], _slot_key(path_)
        slots[key] = (np.shape(value) or (1,), str(np.dtype(value.dtype)), key.endswith("count"))
    return slots, None


def save_train_state(state: TrainState, path, counters: dict) -> None:
    """Weights to `path` (canonical), optimizer state and counters beside it; both written atomically.

    The optax state's paths inside nnx.Optimizer.opt_state (e.g. `0/mu/linear_relu_stack/layers/0/kernel`)
    are the slot keys; they differ from linen's, the canonical weights do not. counters must hold the
    run's `run_id`; canonical.write_checkpoint leaves a pair that resumes whatever point a crash hits.
    """
    slots = {
        _slot_key(path_): np.asarray(jax.device_get(leaf[...])).reshape(np.shape(leaf[...]) or (1,))
        for path_, leaf in nnx.to_flat_state(_opt_slots(state))
    }
    step = state.step
    counters = {**counters, "optimizer_step": step}
    canonical.write_checkpoint(path, to_state_dict(state.model), state.spec, slots, counters)


def load_train_state(state: TrainState, path) -> TrainState:
    """Restore weights, optimizer state and the update count written by save_train_state."""
    spec = state.spec
    weights, slots, counters = canonical.read_checkpoint(path, spec)
    device = next(iter(jax.tree_util.tree_leaves(state.params)[0].devices()))
    for path_, variable in nnx.to_flat_state(_opt_slots(state)):  # the optimizer's own Variables, not copies
        key = _slot_key(path_)
        if key not in slots:
            raise CheckpointError(f"{canonical.train_state_path(path)}: missing optimizer slot {key!r}")
        value = variable[...]
        variable[...] = jax.device_put(slots[key].reshape(np.shape(value)).astype(value.dtype), device)  # in place
    nnx.update(state.model, nnx.state(from_state_dict(weights, spec, device), nnx.Param))
    state.optimizer.step[...] = jnp.asarray(int(counters["optimizer_step"]), state.optimizer.step[...].dtype)
    return state


# ----------------------------------------------------------------------------- the loop


def train_and_evaluate(
    config: TrainConfig,
    data: FashionData,
    spec: ModelSpec = DEFAULT_SPEC,
    out=None,
    metrics_path=None,
    resume=None,
    quiet: bool = False,
    log=print,
    init_from=None,
    on_epoch=None,
):
    """Train for config.epochs, evaluating after each; checkpoint and METRICS.json rewritten atomically every epoch.

    Args:
      config: the shared flat config; data: uint8 Fashion-MNIST (limited here by config.limit_*).
      out: checkpoint path (optimizer state beside it), metrics_path: METRICS.json; None writes none.
      resume: a checkpoint this function wrote; training continues after its last epoch.
      init_from: a canonical checkpoint whose weights replace the seeded init (e.g. the other twin's init).
      on_epoch: called with each finished epoch's counters (its row is counters["history"][-1]), e.g. TensorBoard.
    Returns:
      (state, metrics dict as written to METRICS.json).
    """
    device = resolve_device(config.device)
    # process-wide, as each framework keeps it: every twin trains at config.precision (highest by default), so
    # twins trained by default train alike on every device (JAX's GPU default alone would be TF32-like)
    set_matmul_precision(config.precision)
    run = loop.prepare(config, data, out, metrics_path)
    state = create_train_state(config, spec, device, run.total_steps, loop.init_weights(init_from, spec))
    train_data = put_data(run.data, device)
    val_data = None if run.val is None else put_data(run.val, device)
    history, first_epoch = [], 1
    if resume is not None:
        history, first_epoch, run = loop.resume_point(resume, BACKEND, config, run, *resume_layout(state))
        state = load_train_state(state, resume)
    metrics = loop.run_metrics(BACKEND, device_name(device), versions(), config, spec, run, history)
    metrics["engine"] = "jit_scan"  # nnx has one engine: each epoch slice is one jitted lax.scan over the split state

    for epoch in range(first_epoch, config.epochs + 1):
        order, shifts = loop.epoch_batches(config, epoch, run)  # (steps, B) indices, (steps, B, 2) offsets or None
        progress = loop.progress_bar(BACKEND, epoch, config.epochs, run.steps_per_epoch, quiet)
        start = time.perf_counter()
        state, train_metrics = train_epoch(state, train_data, order, config, progress, shifts)
        seconds = time.perf_counter() - start  # train_epoch returned host floats, so the device is done
        if progress is not None:
            progress.close()
        test_metrics = evaluate(state, train_data, config)
        val_metrics = None if val_data is None else evaluate(state, val_data, config)
        row = loop.epoch_row(epoch, seconds, train_metrics, test_metrics, val_metrics, run)
        history.append(row)
        counters = loop.counters(BACKEND, epoch, run, config, history)
        if out is not None:  # saved before anything else can fail, so a crash loses at most the running epoch
            save_train_state(state, out, counters)
        loop.write_metrics(metrics_path, metrics)
        log(loop.epoch_line(BACKEND, epoch, config.epochs, row))
        if on_epoch is not None:  # e.g. fashion_common.tensorboard.EpochWriter
            on_epoch(counters)
    return state, metrics
