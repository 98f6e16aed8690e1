"""Training and evaluation for the torch twin: the tutorial's train_loop/test_loop, with the data on the device.

Mirrors fashion_flax/train.py. The whole set lives as one uint8 tensor on the training device;
a step gathers its batch by index and scales by 1/255 (what ToTensor does), so there are no
per-sample PIL transforms and no DataLoader on the hot path.
"""

from __future__ import annotations

import dataclasses
from typing import Dict

import numpy as np
import torch
import torch.nn.functional as F

from fashion_common import checkpoint as canonical
from fashion_common import loop
from fashion_common.config import TrainConfig, learning_rate
from fashion_common.data import FashionData
from fashion_common.errors import CheckpointError
from fashion_common.spec import DEFAULT_SPEC, ModelSpec, checkpoint_keys

from . import augment
from .checkpoint import from_state_dict, save_checkpoint
from .model import ACTIVATION_FUNCTIONS, NeuralNetwork, create_model, resolve_device

BACKEND = "torch"


@dataclasses.dataclass
class TrainState:
    """Model, optimizer and update count: what flax keeps in its TrainState."""

    model: NeuralNetwork
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    total_steps: int
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
    # fused: one pass over each tensor per update (CPU and CUDA kernels) instead of ~10 foreach ops;
    # on this 2-core CPU it makes the AdamW update ~1.4 ms -> see README, Results
    fused = {"fused": True}
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, **fused)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, **fused)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, **fused)


def create_train_state(config: TrainConfig, spec: ModelSpec = DEFAULT_SPEC, device=None, total_steps: int = 1, state_dict=None) -> TrainState:
    """A fresh model (seeded from config.seed, or the given canonical state_dict) and its optimizer."""
    device = resolve_device(config.device) if device is None else torch.device(device)
    torch.manual_seed(config.seed)
    model = create_model(spec, config.seed, device) if state_dict is None else from_state_dict(state_dict, spec, device)
    return TrainState(model, make_optimizer(model, config), config, total_steps)


def put_data(data: FashionData, device=None) -> DeviceData:
    """Numpy uint8 arrays -> tensors on the device (uint8 keeps the copy 4x smaller than float32)."""
    device = torch.device("cpu") if device is None else torch.device(device)
    as_tensor = lambda a, dtype: torch.as_tensor(np.ascontiguousarray(a)).to(device=device, dtype=dtype)
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


def autograd_train_step(state: TrainState, images: torch.Tensor, labels: torch.Tensor):
    """One update through autograd and torch.optim, the tutorial's way -> (loss, number correct), 0-d tensors.

    The reference that fused_train_step is tested against, and the path for specs it does not cover.
    """
    _set_lr(state)
    x = images.to(torch.float32).div_(255.0)  # (B, 28, 28) in [0, 1], as ToTensor
    logits = state.model(x)  # (B, 10)
    loss = loss_fn(logits, labels, state.config.label_smoothing)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    state.optimizer.step()
    state.step += 1
    correct = (logits.detach().argmax(1) == labels).sum()
    return loss.detach(), correct


def _set_lr(state: TrainState) -> float:
    lr = learning_rate(state.config, state.step, state.total_steps)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    return lr


def _activation_backward_(name: str, grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """grad * act'(pre), in place, from the activation's output `out` (what the fused step keeps)."""
    if name == "relu":
        # what autograd runs for nn.ReLU (masks where out <= 0), written in place into grad
        return torch.ops.aten.threshold_backward.grad_input(grad, out, 0.0, grad_input=grad)
    if name == "sigmoid":
        return grad.mul_(out * (1.0 - out))
    if name == "tanh":
        return grad.mul_(1.0 - out * out)
    return grad.zero_()  # binary_step: the gradient is 0 everywhere


def _activation_(name: str, h: torch.Tensor) -> torch.Tensor:
    """The hidden activation, in place on its (B, fan_out) buffer."""
    if name == "relu":
        return h.relu_()
    if name == "sigmoid":
        return h.sigmoid_()
    if name == "tanh":
        return h.tanh_()
    return h.copy_(ACTIVATION_FUNCTIONS[name](h))


def _workspace(state: TrainState, batch: int, device) -> Dict[str, torch.Tensor]:
    """Persistent activation buffers for one batch size, so the step allocates nothing large.

    Freeing and re-allocating these (>= 128 KiB each) every step sends glibc's malloc to mmap and
    munmap, and the page faults cost up to half a step on this CPU once another library (JAX)
    has changed the heap's layout. Static buffers are also what a CUDA graph needs.
    """
    key = (batch, str(device))
    cache = state.__dict__.setdefault("_workspaces", {})
    if key not in cache:
        sizes = state.model.spec.layer_sizes
        empty = lambda *shape: torch.empty(shape, dtype=torch.float32, device=device)
        ws = {"x": empty(batch, sizes[0][0]), "logits": empty(batch, sizes[-1][1])}
        for j, (_, fan_out) in enumerate(sizes[:-1]):
            ws[f"h{j}"] = empty(batch, fan_out)  # output of hidden layer j
            ws[f"d{j}"] = empty(batch, fan_out)  # loss gradient at that output
        cache[key] = ws
    return cache[key]


def fused_supported(spec: ModelSpec) -> bool:
    return spec.output_activation is None


@torch.no_grad()
def fused_train_step(state: TrainState, images: torch.Tensor, labels: torch.Tensor):
    """The same update as autograd_train_step, with the backward pass written out: fewer, larger ops.

    Autograd's engine, its per-step gradient allocations and the input gradient cost about as much
    as the matmuls on a 2-core CPU at batch 64. Here the gradients go straight into persistent
    .grad buffers (or, for plain SGD, straight into the weights: W += -lr * delta^T h is one GEMM
    with beta=1). tests/test_train.py checks this step against autograd_train_step.
    """
    model, config = state.model, state.config
    lr = _set_lr(state)
    linears = [model.linear_relu_stack[i] for i in model.spec.linear_indices]
    batch = labels.shape[0]
    ws = _workspace(state, batch, labels.device)
    # ---- forward: inputs[j] is what linear j reads, (B, 784) then (B, 512), (B, 512)
    inputs = [torch.div(images.reshape(batch, -1), 255.0, out=ws["x"])]  # uint8 -> float32 in [0, 1], as ToTensor
    for j, lin in enumerate(linears[:-1]):
        h = torch.addmm(lin.bias, inputs[-1], lin.weight.t(), out=ws[f"h{j}"])
        inputs.append(_activation_(model.spec.activation, h))
    logits = torch.addmm(linears[-1].bias, inputs[-1], linears[-1].weight.t(), out=ws["logits"])  # (B, 10)
    # ---- loss and its gradient with respect to the logits: (softmax - target) / B
    log_probs = torch.log_softmax(logits, dim=1)
    if config.label_smoothing:
        k = logits.shape[1]
        target = torch.full_like(logits, config.label_smoothing / k)
        target.scatter_(1, labels[:, None], 1.0 - config.label_smoothing + config.label_smoothing / k)
        loss = -(target * log_probs).sum(1).mean()
    else:
        target = None
        loss = F.nll_loss(log_probs, labels)
    correct = (logits.argmax(1) == labels).sum()
    delta = log_probs.exp_()  # softmax, reusing the buffer
    if target is None:
        delta[torch.arange(batch, device=delta.device), labels] -= 1.0
    else:
        delta.sub_(target)
    delta.div_(batch)
    # ---- backward: deltas[j] is dLoss/d(output of linear j), computed before any weight moves
    deltas = [delta]
    for j in range(len(linears) - 1, 0, -1):
        grad = torch.mm(deltas[0], linears[j].weight, out=ws[f"d{j - 1}"])  # (B, fan_in of linear j)
        deltas.insert(0, _activation_backward_(model.spec.activation, grad, inputs[j]))
    # ---- update
    plain_sgd = config.optimizer == "sgd" and config.momentum == 0.0 and config.weight_decay == 0.0
    for lin, d, h in zip(linears, deltas, inputs):
        if plain_sgd:
            lin.weight.addmm_(d.t(), h, alpha=-lr)  # W <- W - lr * d^T h, one GEMM
            lin.bias.add_(d.sum(0), alpha=-lr)
        else:
            if lin.weight.grad is None:
                lin.weight.grad, lin.bias.grad = torch.empty_like(lin.weight), torch.empty_like(lin.bias)
            torch.mm(d.t(), h, out=lin.weight.grad)  # (out, in), the torch layout
            torch.sum(d, 0, out=lin.bias.grad)
    if not plain_sgd:
        state.optimizer.step()
    state.step += 1
    return loss, correct


# False: every step goes through autograd_train_step (the recipe runs use this path).
FUSED = True


def train_step(state: TrainState, images: torch.Tensor, labels: torch.Tensor, shifts=None):
    """One update on a batch of uint8 images (B, 28, 28) -> (loss, number correct), both 0-d tensors on the device.

    Runs fused_train_step where the spec allows it (the tutorial's network does) and FUSED is on, else
    autograd_train_step. shifts: optional (B, 2) int offsets from fashion_common.augment, applied on the device.
    """
    if shifts is not None:
        images = augment.shift_images(images, shifts)  # (B, 28, 28) uint8, zero fill
    if FUSED and fused_supported(state.model.spec):
        return fused_train_step(state, images, labels)
    return autograd_train_step(state, images, labels)


def train_epoch(state: TrainState, data: DeviceData, order: np.ndarray, config: TrainConfig, progress=None, shifts=None):
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
            idx = order_t[i]
            shift = None if shifts_t is None else shifts_t[i]
            loss, correct = train_step(state, data.train_images[idx], data.train_labels[idx], shift)
            loss_sum += loss
            correct_sum += correct
        seen += chunk.stop - chunk.start
        if progress is not None:  # one host sync per slice, not per step
            progress.update(chunk.stop - chunk.start)
            progress.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct_sum.item() / (seen * order.shape[1]):.3f}")
    steps = len(order)
    return state, {"train_loss": loss_sum.item() / steps, "train_accuracy": correct_sum.item() / (steps * order.shape[1])}


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(state: TrainState, data: DeviceData, config: TrainConfig) -> Dict[str, float]:
    """The tutorial's test_loop over the whole test set -> {"test_loss", "test_accuracy"} (plain cross-entropy)."""
    return evaluate_model(state.model, data.test_images, data.test_labels, config.eval_batch_size)


@torch.no_grad()
def evaluate_model(model: NeuralNetwork, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 10_000) -> Dict[str, float]:
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


@torch.no_grad()
def predict_proba(model: NeuralNetwork, images: np.ndarray) -> np.ndarray:
    """Float images (N, 28, 28) in [0, 1] -> softmax probabilities (N, 10) as numpy."""
    model.eval()
    device = next(model.parameters()).device
    logits = model(torch.as_tensor(images, dtype=torch.float32, device=device))
    return torch.softmax(logits, dim=1).cpu().numpy()


# The tutorial's names for one pass of training and one pass of evaluation.
train_loop = train_epoch
test_loop = evaluate


# ----------------------------------------------------------------------------- checkpoints with optimizer state

# torch optimizer slot name -> canonical slot name (optax's names for the same buffers differ; see flax twin)
_SLOTS = {"momentum_buffer": "momentum", "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "step": "step"}


def save_train_state(state: TrainState, path, counters: dict) -> None:
    """Weights to `path` (canonical), optimizer slots and counters beside it; both written atomically.

    The sidecar goes first and the weights name its step, so a crash between the two renames is detected on resume.
    """
    keys = checkpoint_keys(state.model.spec)
    slots = {}
    for key, per_param in zip(keys, (state.optimizer.state.get(p, {}) for p in state.model.parameters())):
        for name, value in per_param.items():
            if torch.is_tensor(value):
                slots[f"{_SLOTS[name]}/{key}"] = value.detach().cpu().reshape(value.shape or (1,)).numpy().copy()
    canonical.write_train_state(path, slots, {**counters, "optimizer_step": state.step})
    save_checkpoint(state.model, path, {"step": str(state.step)})


def load_train_state(state: TrainState, path) -> TrainState:
    """Restore weights, optimizer slots and the update count written by save_train_state."""
    weights, _ = canonical.read_state(path, state.model.spec)
    slots, counters = canonical.read_train_state(path)
    canonical.check_pair(path, counters)
    device = next(state.model.parameters()).device
    with torch.no_grad():
        for key, param in zip(checkpoint_keys(state.model.spec), state.model.parameters()):
            param.copy_(torch.from_numpy(weights[key]))
    inverse = {v: k for k, v in _SLOTS.items()}
    for key, param in zip(checkpoint_keys(state.model.spec), state.model.parameters()):
        restored = {}
        for slot_key, value in slots.items():
            slot, _, name = slot_key.partition("/")
            if name == key:
                if slot not in inverse or (slot != "step" and tuple(value.shape) != tuple(param.shape)):
                    raise CheckpointError(f"{canonical.train_state_path(path)}: optimizer slot {slot_key!r} has shape {value.shape}, expected {tuple(param.shape)}")
                t = torch.from_numpy(value.copy())
                restored[inverse[slot]] = t.reshape(()) if slot == "step" else t.to(device)
        if restored:
            state.optimizer.state[param] = restored
    state.step = int(counters["optimizer_step"])
    return state



# ----------------------------------------------------------------------------- the loop


def _versions() -> Dict[str, str]:
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": np.__version__}


def _device_name(device) -> str:
    device = torch.device(device) if device is not None else torch.device("cpu")
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


OPS = loop.TwinOps(
    backend=BACKEND,
    init_state=create_train_state,
    put_data=put_data,
    train_epoch=train_epoch,
    evaluate=evaluate,
    save=save_train_state,
    load=load_train_state,
    device_name=_device_name,
    versions=_versions,
)


def train_and_evaluate(config: TrainConfig, data: FashionData, spec: ModelSpec = DEFAULT_SPEC, out=None, metrics_path=None, resume=None, quiet=False, log=print):
    """Train and evaluate the torch twin; see fashion_common.loop.train_and_evaluate. Returns (state, metrics)."""
    device = resolve_device(config.device)
    return loop.train_and_evaluate(OPS, config, data, spec, out, metrics_path, resume, quiet, log, device)
