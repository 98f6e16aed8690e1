"""HAND-WRITTEN backward pass for the torch twin: the opt-in `engine="fused"`, never a default.

This is not how PyTorch is meant to be used: the twin's training step (fashion_torch/train.py)
is autograd + torch.optim. This module writes the MLP's backward out by hand into persistent
buffers, and the benchmark reports it as what a compiler leaves on the table on a small CPU.
tests/test_train.py checks it against the autograd step (gradients and weights).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from fashion_common.spec import ModelSpec

from .model import ACTIVATION_FUNCTIONS

# The hidden activations whose derivative _activation_backward_ writes out. A name the spec allows but this
# list lacks (a GELU added to fashion_common.spec) is refused by supported(), never trained with a zero gradient.
DIFFERENTIATED = ("relu", "sigmoid", "tanh", "binary_step")


def supported(spec: ModelSpec) -> bool:
    """The hand-written backward covers the DIFFERENTIATED hidden activations only, and no output activation."""
    return spec.output_activation is None and spec.activation in DIFFERENTIATED


def _activation_backward_(name: str, grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """grad * act'(pre), in place, from the activation's output `out` (what the fused step keeps)."""
    if name == "relu":
        # what autograd runs for nn.ReLU (masks where out <= 0), written in place into grad
        return torch.ops.aten.threshold_backward.grad_input(grad, out, 0.0, grad_input=grad)
    if name == "sigmoid":
        return grad.mul_(out * (1.0 - out))
    if name == "tanh":
        return grad.mul_(1.0 - out * out)
    if name == "binary_step":
        return grad.zero_()  # the step's gradient is 0 everywhere (autograd agrees: tests/test_train.py)
    raise ValueError(f"engine fused has no backward for activation {name!r}; use eager or compile")


def _activation_(name: str, h: torch.Tensor) -> torch.Tensor:
    """The hidden activation, in place on its (B, fan_out) buffer."""
    if name == "relu":
        return h.relu_()
    if name == "sigmoid":
        return h.sigmoid_()
    if name == "tanh":
        return h.tanh_()
    return h.copy_(ACTIVATION_FUNCTIONS[name](h))


def _workspace(state, batch: int, device) -> dict[str, torch.Tensor]:
    """Persistent activation buffers for one batch size, so the step allocates nothing large.

    Freeing and re-allocating these (>= 128 KiB each) every step sends glibc's malloc to mmap and
    munmap, and the page faults cost up to half a step on this CPU once another library (JAX)
    has changed the heap's layout. Static buffers are also what a CUDA graph needs.
    """
    key = (batch, str(device))
    cache = state.__dict__.setdefault("_workspaces", {})
    if key not in cache:
        sizes = state.model.spec.layer_sizes

        def empty(*shape):
            return torch.empty(shape, dtype=torch.float32, device=device)

        ws = {"x": empty(batch, sizes[0][0]), "logits": empty(batch, sizes[-1][1])}
        for j, (_, fan_out) in enumerate(sizes[:-1]):
            ws[f"h{j}"] = empty(batch, fan_out)  # output of hidden layer j
            ws[f"d{j}"] = empty(batch, fan_out)  # loss gradient at that output
        cache[key] = ws
    return cache[key]


@torch.no_grad()
def train_step(state, images: torch.Tensor, labels: torch.Tensor):
    """The same update as fashion_torch.train's autograd step, with the backward pass written out by hand.

    Autograd's engine, its per-step gradient allocations and the input gradient cost about as much
    as the matmuls on a 2-core CPU at batch 64. Here the gradients go straight into persistent
    .grad buffers (or, for plain SGD, straight into the weights: W += -lr * delta^T h is one GEMM
    with beta=1); torch.optim and the lr_scheduler still do the update and the schedule.
    Returns (loss, number correct), 0-d tensors on the device.
    """
    model, config = state.model, state.config
    lr = state.optimizer.param_groups[0]["lr"]  # this step's rate, as the scheduler set it
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
    for lin, d, h in zip(linears, deltas, inputs, strict=True):
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
        state.scheduler.step()
    else:
        with warnings.catch_warnings():  # the update above bypassed optimizer.step(), which the scheduler warns about
            warnings.simplefilter("ignore", UserWarning)
            state.scheduler.step()
    state.step += 1
    return loss, correct
