"""Training and evaluation for the torch twin: the tutorial's train_loop/test_loop, with the data on the device.

Mirrors fashion_flax/train.py. The whole set lives as one uint8 tensor on the training device;
a step gathers its batch by index and scales by 1/255 (what ToTensor does), so there are no
per-sample PIL transforms and no DataLoader on the hot path. The step is PyTorch's own:
`pred = model(X)`, `loss = loss_fn(pred, y)`, `loss.backward()`, `optimizer.step()`,
`optimizer.zero_grad()`, with torch.optim and torch.optim.lr_scheduler; the torch-only `engine`
argument picks eager, torch.compile or CUDA graphs, or the opt-in hand-written step in fused.py.
The file ends with `train_and_evaluate`, the whole training loop, which mirrors the flax twin's.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from fashion_common import checkpoint as canonical
from fashion_common import interrupt, loop
from fashion_common.config import TrainConfig
from fashion_common.data import FashionData
from fashion_common.errors import CheckpointError, ConfigError
from fashion_common.spec import DEFAULT_SPEC, ModelSpec, checkpoint_keys

from . import augment, fused
from .checkpoint import from_state_dict, to_state_dict
from .model import NeuralNetwork, create_model, resolve_device, set_matmul_precision

BACKEND = "torch"

# engine="auto" per device type. CPU: eager. On the quiet 2-core CPU compile estimated the default
# 80-epoch run 7-12 % faster (README, Results: Speed), about eager's run-to-run swing; eager stays
# because torch.compile needs a C++ toolchain at run time and a ~10 s cold compile every short run
# pays. CUDA: compile, NOT measured yet (no GPU was lent); the launch-bound small MLP is what
# Inductor's fused kernels (and cuda_graph) are for.
AUTO_ENGINE = {"cpu": "eager", "cuda": "compile"}

# How the torch twin runs a step; a torch-only option, so an argument here, not a TrainConfig field:
#   eager      autograd + torch.optim, op by op (the tutorial's loop, data on the device)
#   compile    the same, with model + loss under torch.compile (Inductor fuses the forward and backward)
#   cuda_graph CUDA only: model + loss under torch.compile(mode="reduce-overhead"), i.e. replayed CUDA graphs
#   fused      opt-in, hand-written backward (fashion_torch/fused.py), tested against autograd; never a default
#   auto       per device (AUTO_ENGINE above)
ENGINES = ("auto", "eager", "compile", "cuda_graph", "fused")


@dataclasses.dataclass
class TrainState:
    """Model, optimizer, lr scheduler and update count: what flax keeps in its TrainState."""

    model: NeuralNetwork
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    config: TrainConfig
    total_steps: int
    engine: str  # the resolved engine: eager, compile, cuda_graph or fused (never "auto")
    model_loss: Callable  # (images, labels) -> (loss, correct): model_loss below, compiled per engine
    step: int = 0


@dataclasses.dataclass
class DeviceData:
    """The whole set on the device: uint8 images (N, 28, 28) and int64 labels (N,)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


# ----------------------------------------------------------------------------- state


def make_optimizer(model: NeuralNetwork, config: TrainConfig) -> torch.optim.Optimizer:
    """sgd (optional momentum), adam (L2 added to the gradient) or adamw (decoupled decay), as optax builds them."""
    params = list(model.parameters())
    # fused=True: torch.optim's own single-pass kernels (CPU and CUDA), one read and write of each
    # tensor per update instead of the ~10 elementwise ops of the for-loop/foreach implementations.
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, fused=True
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)


def make_schedule(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The lr schedule, stepped once per update: cosine from lr to 0 over total_steps, or constant (optax's twins)."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=0.0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def resolve_engine(engine: str, device: torch.device, spec: ModelSpec = DEFAULT_SPEC) -> str:
    """`engine` (one of ENGINES), with "auto" replaced by AUTO_ENGINE for the device.

    Impossible choices raise ConfigError.
    """
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    engine = AUTO_ENGINE.get(device.type, "eager") if engine == "auto" else engine
    if engine == "cuda_graph" and device.type != "cuda":
        raise ConfigError(f"engine cuda_graph needs a CUDA device, not {device.type}; use eager or compile")
    if engine == "fused" and not fused.supported(spec):
        raise ConfigError(
            f"engine fused (the hand-written backward) covers the hidden activations {', '.join(fused.DIFFERENTIATED)} "
            "and no output activation; use eager or compile"
        )
    return engine


def create_train_state(
    config: TrainConfig,
    spec: ModelSpec = DEFAULT_SPEC,
    device=None,
    total_steps: int = 1,
    state_dict=None,
    engine: str = "auto",
) -> TrainState:
    """A fresh model (seeded from config.seed, or the given canonical state_dict), its optimizer and lr scheduler.

    engine: torch only (ENGINES); the flax twin's create_train_state has no such argument.
    """
    device = resolve_device(config.device) if device is None else torch.device(device)
    engine = resolve_engine(engine, device, spec)
    torch.manual_seed(config.seed)
    model = create_model(spec, config.seed, device) if state_dict is None else from_state_dict(state_dict, spec, device)
    optimizer = make_optimizer(model, config)
    step_fn = make_model_loss(model, config, engine)
    return TrainState(
        model, optimizer, make_schedule(optimizer, config, total_steps), config, total_steps, engine, step_fn
    )


def make_model_loss(model: nn.Module, config: TrainConfig, engine: str) -> Callable:
    """(images, labels) -> (loss, correct) through `model`, compiled as the engine says.

    `model` is the twin, or its DDP wrapper.
    """

    def step_fn(images, labels):
        return model_loss(model, images, labels, config.label_smoothing)

    if engine == "compile":
        step_fn = torch.compile(step_fn)
    elif engine == "cuda_graph":
        step_fn = torch.compile(step_fn, mode="reduce-overhead")  # forward and backward replayed as CUDA graphs
    return step_fn


def put_data(data: FashionData, device=None) -> DeviceData:
    """Numpy uint8 arrays -> tensors on the device (uint8 keeps the copy 4x smaller than float32)."""
    device = torch.device("cpu") if device is None else torch.device(device)

    def as_tensor(a, dtype):
        return torch.as_tensor(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

    return DeviceData(
        as_tensor(data.train_images, torch.uint8),
        as_tensor(data.train_labels, torch.int64),
        as_tensor(data.test_images, torch.uint8),
        as_tensor(data.test_labels, torch.int64),
    )


# ----------------------------------------------------------------------------- one step


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over the batch; (B, 10) logits, (B,) int labels."""
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


def model_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0):
    """Forward and loss on uint8 images (B, 28, 28) -> (loss, number correct): the part torch.compile fuses."""
    X = images.to(torch.float32) / 255.0  # (B, 28, 28) in [0, 1], as ToTensor
    pred = model(X)  # (B, 10) logits
    loss = loss_fn(pred, labels, label_smoothing)
    correct = (pred.detach().argmax(1) == labels).sum()
    return loss, correct


def train_step(state: TrainState, images: torch.Tensor, labels: torch.Tensor, shifts=None):
    """One update on a batch of uint8 images (B, 28, 28) -> (loss, number correct), both 0-d tensors on the device.

    The tutorial's train_loop body; nothing here waits for the device (no .item()).
    shifts: optional (B, 2) int offsets from fashion_common.augment, applied on the device first.
    """
    if shifts is not None:
        images = augment.shift_images(images, shifts)  # (B, 28, 28) uint8, zero fill
    if state.engine == "fused":
        return fused.train_step(state, images, labels)  # opt-in, hand-written backward
    loss, correct = state.model_loss(images, labels)  # pred = model(X); loss = loss_fn(pred, y)
    loss.backward()
    state.optimizer.step()
    state.optimizer.zero_grad()
    state.scheduler.step()  # once per update, as optax counts
    state.step += 1
    return loss.detach(), correct


def train_epoch(
    state: TrainState, data: DeviceData, order: np.ndarray, config: TrainConfig, progress=None, shifts=None
):
    """One pass over `order` (steps, B) of training indices -> (state, {"train_loss", "train_accuracy"}).

    shifts: optional (steps, B, 2) int8 offsets (fashion_common.augment.shift_offsets).
    """
    state.model.train()
    order_t = torch.as_tensor(order, device=data.train_images.device, dtype=torch.int64)
    shifts_t = None if shifts is None else torch.as_tensor(shifts, device=order_t.device, dtype=torch.int64)
    loss_sum = torch.zeros((), device=order_t.device)
    correct_sum = torch.zeros((), device=order_t.device, dtype=torch.int64)
    seen = 0
    for chunk in loop.progress_chunks(len(order), progress):
        for i in range(chunk.start, chunk.stop):
            interrupt.check()  # Ctrl-C stops between steps
            idx = order_t[i]
            shift = None if shifts_t is None else shifts_t[i]
            loss, correct = train_step(state, data.train_images[idx], data.train_labels[idx], shift)
            loss_sum += loss
            correct_sum += correct
        seen += chunk.stop - chunk.start
        if progress is not None:  # one host sync per slice, not per step
            progress.update(chunk.stop - chunk.start)
            progress.set_postfix(
                loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct_sum.item() / (seen * order.shape[1]):.3f}"
            )
    steps = len(order)
    return state, {
        "train_loss": loss_sum.item() / steps,
        "train_accuracy": correct_sum.item() / (steps * order.shape[1]),
    }


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(state: TrainState, data: DeviceData, config: TrainConfig) -> dict[str, float]:
    """The tutorial's test_loop over the whole test set -> {"test_loss", "test_accuracy"} (plain cross-entropy)."""
    return evaluate_model(state.model, data.test_images, data.test_labels, config.eval_batch_size)


@torch.no_grad()
def evaluate_model(
    model: NeuralNetwork, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 10_000
) -> dict[str, float]:
    """Mean test loss and accuracy of `model` on uint8 images (N, 28, 28) and labels (N,)."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=images.device)
    correct = torch.zeros((), dtype=torch.int64, device=images.device)
    for start in range(0, len(labels), batch_size):
        x = images[start : start + batch_size].to(torch.float32).div_(255.0)
        y = labels[start : start + batch_size]
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
    return {"test_loss": loss_sum.item() / len(labels), "test_accuracy": correct.item() / len(labels)}


def trained_model(state: TrainState) -> NeuralNetwork:
    """The model a train state holds, in the form load_checkpoint returns (an nn.Module)."""
    return state.model


@torch.no_grad()
def predict_proba(model: NeuralNetwork, images: np.ndarray) -> np.ndarray:
    """Float images (N, 28, 28) in [0, 1] -> softmax probabilities (N, 10) as numpy."""
    model.eval()
    device = next(model.parameters()).device
    logits = model(torch.as_tensor(images, dtype=torch.float32, device=device))
    return torch.softmax(logits, dim=1).cpu().numpy()


# ----------------------------------------------------------------------------- checkpoints with optimizer state

# torch optimizer slot name -> canonical slot name (optax's names for the same buffers differ; see flax twin)
_SLOTS = {"momentum_buffer": "momentum", "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "step": "step"}


# torch.optim's per-parameter buffers for each optimizer of the config (SGD keeps none without momentum)
_OPTIMIZER_SLOTS = {
    "sgd": ("momentum",),
    "adam": ("exp_avg", "exp_avg_sq", "step"),
    "adamw": ("exp_avg", "exp_avg_sq", "step"),
}


def resume_layout(state: TrainState) -> tuple[dict, dict]:
    """What a sidecar of this run must hold (canonical.validate_training_state): slot -> (shape, dtype, is_count), and
    the schedule's state as a fresh scheduler of this run has it (its position fields are checked apart).

    Mirrors fashion_flax.train.resume_layout; torch's scheduler is state beside the optimizer, optax's a slot.
    """
    names = _OPTIMIZER_SLOTS[state.config.optimizer]
    if state.config.optimizer == "sgd" and not state.config.momentum:
        names = ()
    slots = {}
    for key, param in zip(checkpoint_keys(state.model.spec), state.model.parameters(), strict=True):
        for name in names:
            shape = (1,) if name == "step" else tuple(param.shape)  # step: a 0-d tensor, stored as (1,)
            slots[f"{name}/{key}"] = (shape, "float32", name == "step")
    return slots, state.scheduler.state_dict()


def save_train_state(state: TrainState, path, counters: dict) -> None:
    """Weights to `path`; optimizer slots, counters and a copy of the weights beside it (canonical.write_checkpoint).

    counters must hold the run's `run_id`; a crash at any point of the write leaves a pair that resumes.
    """
    keys = checkpoint_keys(state.model.spec)
    slots = {}
    for key, per_param in zip(keys, (state.optimizer.state.get(p, {}) for p in state.model.parameters()), strict=True):
        for name, value in per_param.items():
            if torch.is_tensor(value):
                slots[f"{_SLOTS[name]}/{key}"] = value.detach().cpu().reshape(value.shape or (1,)).numpy().copy()
    # The scheduler's position and its last rates ride in the JSON counters (floats round-trip exactly).
    counters = {**counters, "optimizer_step": state.step, "scheduler": state.scheduler.state_dict()}
    canonical.write_checkpoint(path, to_state_dict(state.model), state.model.spec, slots, counters)


def load_train_state(state: TrainState, path) -> TrainState:
    """Restore weights, optimizer slots and the update count written by save_train_state."""
    weights, slots, counters = canonical.read_checkpoint(path, state.model.spec)
    device = next(state.model.parameters()).device
    with torch.no_grad():
        for key, param in zip(checkpoint_keys(state.model.spec), state.model.parameters(), strict=True):
            param.copy_(torch.from_numpy(weights[key]))
    inverse = {v: k for k, v in _SLOTS.items()}
    for key, param in zip(checkpoint_keys(state.model.spec), state.model.parameters(), strict=True):
        restored = {}
        for slot_key, value in slots.items():
            slot, _, name = slot_key.partition("/")
            if name == key:
                if slot not in inverse or (slot != "step" and tuple(value.shape) != tuple(param.shape)):
                    raise CheckpointError(
                        f"{canonical.train_state_path(path)}: optimizer slot {slot_key!r} has shape {value.shape}, "
                        f"expected {tuple(param.shape)}"
                    )
                t = torch.from_numpy(value.copy())
                restored[inverse[slot]] = t.reshape(()) if slot == "step" else t.to(device)
        if restored:
            state.optimizer.state[param] = restored
    state.step = int(counters["optimizer_step"])
    if "scheduler" in counters:
        state.scheduler.load_state_dict(counters["scheduler"])
    else:  # a sidecar from before the scheduler was saved: replay it to the same position
        for _ in range(state.step - state.scheduler.last_epoch):
            state.scheduler.step()
    # CosineAnnealingLR computes each rate from the previous one, so the optimizer's current rate is state too
    for group, lr in zip(state.optimizer.param_groups, state.scheduler.get_last_lr(), strict=True):
        group["lr"] = lr
    return state


# ----------------------------------------------------------------------------- the loop


def versions() -> dict[str, str]:
    """The library versions METRICS.json records."""
    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": np.__version__}


def device_name(device) -> str:
    device = torch.device(device) if device is not None else torch.device("cpu")
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


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
    engine: str = "auto",
):
    """Train for config.epochs, evaluating after each; checkpoint and METRICS.json rewritten atomically every epoch.

    Args:
      config: the shared flat config; data: uint8 Fashion-MNIST (limited here by config.limit_*).
      out: checkpoint path (optimizer state beside it), metrics_path: METRICS.json; None writes none.
      resume: a checkpoint this function wrote; training continues after its last epoch.
      init_from: a canonical checkpoint whose weights replace the seeded init (e.g. the other twin's init).
      on_epoch: called with each finished epoch's counters (its row is counters["history"][-1]), e.g. TensorBoard.
      engine: torch only, one of ENGINES.
    Returns:
      (state, metrics dict as written to METRICS.json).
    """
    device = resolve_device(config.device)
    # process-wide, as each framework keeps it: every twin trains at config.precision (highest by default), so
    # twins trained by default train alike on every device (JAX's GPU default alone would be TF32-like)
    set_matmul_precision(config.precision)
    run = loop.prepare(config, data, out, metrics_path)
    state = create_train_state(config, spec, device, run.total_steps, loop.init_weights(init_from, spec), engine)
    train_data = put_data(run.data, device)
    val_data = None if run.val is None else put_data(run.val, device)
    history, first_epoch = [], 1
    if resume is not None:
        history, first_epoch, run = loop.resume_point(resume, BACKEND, config, run, *resume_layout(state))
        state = load_train_state(state, resume)
    metrics = loop.run_metrics(BACKEND, device_name(device), versions(), config, spec, run, history)
    metrics["engine"] = state.engine  # torch only: which engine ran the steps

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
