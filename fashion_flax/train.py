"""Training and evaluation for the flax twin: a TrainState with optax and a jitted step.

Mirrors fashion_torch/train.py. The whole set lives as one uint8 array on the training device;
a step gathers its batch by index and scales by 1/255 (what ToTensor does). A slice of an
epoch runs as one compiled `lax.scan` over rows of batch indices, so the host only dispatches
about 20 programs an epoch. The file ends with `train_and_evaluate`, the whole training loop, which
mirrors the torch twin's.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state as flax_train_state

from fashion_common import checkpoint as canonical
from fashion_common import interrupt, loop
from fashion_common.config import TrainConfig
from fashion_common.data import FashionData
from fashion_common.errors import CheckpointError
from fashion_common.spec import DEFAULT_SPEC, ModelSpec

from . import augment
from .checkpoint import from_state_dict, to_state_dict
from .model import NeuralNetwork, create_model, resolve_device, set_matmul_precision

BACKEND = "flax"


class TrainState(flax_train_state.TrainState):
    """params (the parameter tree), opt_state, step and apply_fn, as Flax ships it; step counts updates, as torch's.

    The spec is a static field: the checkpoint writer needs it, and a jitted step does not trace it.
    """

    spec: ModelSpec = struct.field(pytree_node=False, default=DEFAULT_SPEC)


@dataclasses.dataclass
class DeviceData:
    """The whole set on the device: uint8 images (N, 28, 28) and int32 labels (N,)."""

    train_images: jax.Array
    train_labels: jax.Array
    test_images: jax.Array
    test_labels: jax.Array


# ----------------------------------------------------------------------------- state


@functools.lru_cache(maxsize=32)
def make_optimizer(config: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """sgd (optional momentum), adam (L2 added to the gradient) or adamw (decoupled decay), as torch.optim builds them.

    Cached on the frozen config, so an equal config gives the same optax object and the jitted step is not
    compiled again.
    """
    schedule = make_schedule(config, total_steps)
    if config.optimizer == "sgd":
        sgd = optax.sgd(schedule, momentum=config.momentum or None)
        return optax.chain(optax.add_decayed_weights(config.weight_decay), sgd) if config.weight_decay else sgd
    if config.optimizer == "adam":
        adam = optax.adam(schedule)
        return optax.chain(optax.add_decayed_weights(config.weight_decay), adam) if config.weight_decay else adam
    return optax.adamw(schedule, weight_decay=config.weight_decay)


def make_schedule(config: TrainConfig, total_steps: int) -> optax.Schedule:
    """The lr schedule, indexed by update count: cosine from lr to 0 over total_steps, or constant (torch's twins)."""
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(init_value=config.lr, decay_steps=total_steps, alpha=0.0)
    return optax.constant_schedule(config.lr)


def create_train_state(
    config: TrainConfig, spec: ModelSpec = DEFAULT_SPEC, device=None, total_steps: int = 1, state_dict=None
) -> TrainState:
    """Fresh params (seeded from config.seed, or the given canonical state_dict) and their optimizer."""
    device = resolve_device(config.device) if device is None else device
    model, variables = create_model(spec, config.seed, device)
    if state_dict is not None:
        variables = from_state_dict(state_dict, spec, device)
    tx = make_optimizer(config, total_steps)
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx, spec=spec)


def put_data(data: FashionData, device=None) -> DeviceData:
    """Numpy uint8 arrays -> arrays on the device (uint8 keeps the copy 4x smaller than float32)."""

    def put(a, dtype):
        return jax.device_put(np.ascontiguousarray(a, dtype=dtype), device)

    return DeviceData(
        put(data.train_images, np.uint8),
        put(data.train_labels, np.int32),
        put(data.test_images, np.uint8),
        put(data.test_labels, np.int32),
    )


# ----------------------------------------------------------------------------- one step


def loss_fn(logits, labels, label_smoothing: float = 0.0):
    """Mean cross-entropy over the batch; (B, 10) logits, (B,) int labels. Smoothing as torch's label_smoothing."""
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean()


def _step(state: TrainState, images, labels, label_smoothing: float, shifts=None):
    """One update on uint8 images (B, 28, 28) -> (state, (loss, number correct)); grad, update and apply in one program.

    shifts: optional (B, 2) int offsets from fashion_common.augment, applied here on the device.
    """
    if shifts is not None:
        images = augment.shift_images(images, shifts)  # (B, 28, 28) uint8, zero fill
    x = augment.to_unit(images)  # (B, 28, 28) in [0, 1], as ToTensor: torch's x / 255 bit for bit

    def compute_loss(params):
        logits = state.apply_fn({"params": params}, x)  # (B, 10)
        return loss_fn(logits, labels, label_smoothing), logits

    (loss, logits), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads)
    correct = (logits.argmax(1) == labels).sum()
    return state, (loss, correct)


train_step = jax.jit(_step, static_argnames="label_smoothing", donate_argnums=0)


@functools.partial(jax.jit, static_argnames="label_smoothing", donate_argnums=0)
def train_steps(state: TrainState, images, labels, order, label_smoothing: float, shifts=None):
    """Run one step per row of `order` (S, B) as one compiled lax.scan -> (state, loss sum, correct sum).

    shifts: optional (S, B, 2) offsets, scanned alongside `order` (None: no augmentation).
    """

    def body(carry, xs):
        state, loss_sum, correct_sum = carry
        idx, shift = xs
        state, (loss, correct) = _step(state, images[idx], labels[idx], label_smoothing, shift)
        return (state, loss_sum + loss, correct_sum + correct), None

    (state, loss_sum, correct_sum), _ = jax.lax.scan(body, (state, jnp.float32(0), jnp.int32(0)), (order, shifts))
    return state, loss_sum, correct_sum


def train_epoch(
    state: TrainState, data: DeviceData, order: np.ndarray, config: TrainConfig, progress=None, shifts=None
):
    """One pass over `order` (steps, B) of training indices -> (state, {"train_loss", "train_accuracy"}).

    shifts: optional (steps, B, 2) int8 offsets (fashion_common.augment.shift_offsets).
    """
    device = next(iter(data.train_images.devices()))
    order_d = jax.device_put(order, device)
    shifts_d = None if shifts is None else jax.device_put(shifts, device)
    loss_sum, correct_sum, seen = 0.0, 0, 0
    for chunk in loop.progress_chunks(len(order), progress):
        interrupt.check()  # Ctrl-C stops here, between compiled scans, never inside one
        state, chunk_loss, chunk_correct = train_steps(
            state,
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
    steps = len(order)
    return state, {"train_loss": float(loss_sum) / steps, "train_accuracy": int(correct_sum) / (steps * order.shape[1])}


# ----------------------------------------------------------------------------- evaluation


def evaluate(state: TrainState, data: DeviceData, config: TrainConfig) -> dict[str, float]:
    """The tutorial's test_loop over the whole test set -> {"test_loss", "test_accuracy"} (plain cross-entropy)."""
    variables = {"params": state.params}
    return _evaluate(state.apply_fn, variables, data.test_images, data.test_labels, config.eval_batch_size)


@functools.partial(jax.jit, static_argnames="apply_fn")
def _eval_batch(apply_fn, variables, images, labels):
    """(loss sum, correct count) of one chunk of uint8 images (b, 28, 28)."""
    logits = apply_fn(variables, augment.to_unit(images))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()
    return loss, (logits.argmax(1) == labels).sum()


def _evaluate(apply_fn, variables, images, labels, batch_size: int) -> dict[str, float]:
    """Per-sample losses summed over chunks, then divided once: the mean over all images, whatever the chunk size."""
    loss_sum, correct = 0.0, 0
    for start in range(0, len(labels), batch_size):
        loss, c = _eval_batch(
            apply_fn, variables, images[start : start + batch_size], labels[start : start + batch_size]
        )
        loss_sum, correct = loss_sum + float(loss), correct + int(c)
    return {"test_loss": loss_sum / len(labels), "test_accuracy": correct / len(labels)}


def evaluate_model(model: NeuralNetwork, images, labels, batch_size: int = 10_000) -> dict[str, float]:
    """Mean test loss and accuracy of a bound model (load_checkpoint's) on uint8 images (N, 28, 28) and labels (N,)."""
    module, variables = model.unbind()
    return _evaluate(module.apply, variables, images, labels, batch_size)


def trained_model(state: TrainState) -> NeuralNetwork:
    """The model a train state holds, in the form load_checkpoint returns (a bound NeuralNetwork)."""
    return NeuralNetwork(state.spec).bind({"params": state.params})


@functools.partial(jax.jit, static_argnames="apply_fn")
def _probabilities(apply_fn, variables, images):
    return jax.nn.softmax(apply_fn(variables, images), axis=1)


def predict_proba(model: NeuralNetwork, images: np.ndarray) -> np.ndarray:
    """Float images (N, 28, 28) in [0, 1] -> softmax probabilities (N, 10) as numpy, from a bound model."""
    module, variables = model.unbind()
    return np.asarray(_probabilities(module.apply, variables, jnp.asarray(images, jnp.float32)))


# ----------------------------------------------------------------------------- checkpoints with optimizer state


def resume_layout(state: TrainState) -> tuple[dict, None]:
    """What a sidecar of this run must hold (canonical.validate_training_state): slot -> (shape, dtype, is_count),
    read from this run's own fresh optax state; no scheduler state (optax's schedule count is a slot).

    Mirrors fashion_torch.train.resume_layout.
    """
    slots = {
        jax.tree_util.keystr(path): (
            np.shape(leaf) or (1,),
            str(np.dtype(leaf.dtype)),
            jax.tree_util.keystr(path).endswith(".count"),
        )
        for path, leaf in jax.tree_util.tree_leaves_with_path(state.opt_state)
    }
    return slots, None


def save_train_state(state: TrainState, path, counters: dict) -> None:
    """Weights to `path`; optimizer state, counters and a copy of the weights beside it (canonical.write_checkpoint).

    optax's state is a tree whose leaf paths name themselves (e.g. `[0].mu['params']...`); they
    are the slot keys. counters must hold the run's `run_id`; a crash at any point of the write
    leaves a pair that resumes.
    """
    leaves = jax.tree_util.tree_leaves_with_path(state.opt_state)
    slots = {
        jax.tree_util.keystr(path): np.asarray(jax.device_get(leaf)).reshape(np.shape(leaf) or (1,))
        for path, leaf in leaves
    }
    step = int(state.step)
    counters = {**counters, "optimizer_step": step}
    canonical.write_checkpoint(path, to_state_dict(state.params, state.spec), state.spec, slots, counters)


def load_train_state(state: TrainState, path) -> TrainState:
    """Restore weights, optimizer state and the update count written by save_train_state."""
    spec = state.spec
    weights, slots, counters = canonical.read_checkpoint(path, spec)
    device = next(iter(jax.tree_util.tree_leaves(state.params)[0].devices()))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state.opt_state)
    restored = []
    for path_, leaf in leaves:
        key = jax.tree_util.keystr(path_)
        if key not in slots:  # a sidecar written when the state's params were {"params": tree}
            key = key.replace("['linear_relu_stack']", "['params']['linear_relu_stack']")
        if key not in slots:
            raise CheckpointError(f"{canonical.train_state_path(path)}: missing optimizer slot {key!r}")
        restored.append(jax.device_put(slots[key].reshape(np.shape(leaf)).astype(leaf.dtype), device))
    opt_state = jax.tree_util.tree_unflatten(treedef, restored)
    params = from_state_dict(weights, spec, device)["params"]
    return state.replace(params=params, opt_state=opt_state, step=int(counters["optimizer_step"]))


# ----------------------------------------------------------------------------- the loop


def versions() -> dict[str, str]:
    """The library versions METRICS.json records."""
    return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__}


def device_name(device) -> str:
    return "cpu" if device is None or device.platform == "cpu" else device.device_kind


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
    metrics["engine"] = "jit_scan"  # flax has one engine: each epoch slice is one jitted lax.scan

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
