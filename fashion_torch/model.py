"""The tutorial's Fashion-MNIST MLP as a PyTorch nn.Module, plus its activations and device choice.

Mirrors fashion_flax/model.py name for name; a difference between the two is commented.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fashion_common.errors import DeviceError, check_activation_input, check_dim, check_input, check_seed
from fashion_common.inputs import to_numpy
from fashion_common.spec import DEFAULT_SPEC, ModelSpec
from fashion_common.text import format_summary_rows

# ----------------------------------------------------------------------------- activations
# The tutorial's tour: binary step, sigmoid, tanh, ReLU and softmax, as plain functions.


# The shared rules (fashion_common/errors.py), the same in both twins: an integer, bool or complex
# input raises InputDtypeError (check_activation_input); softmax's dim must be an int in range
# (check_dim), else DimError. Floating inputs keep their dtype.


def _check(name: str, x) -> torch.Tensor:
    """x as a tensor (numpy, a list, a JAX array: converted, keeping a dtype torch has), after the shared dtype rule."""
    if isinstance(x, torch.Tensor):
        check_activation_input(name, str(x.dtype).replace("torch.", ""), x.is_floating_point())
        return x
    array, dtype, floating = to_numpy(x)
    check_activation_input(name, dtype, floating)
    kind = getattr(torch, dtype, None)
    if array.dtype.kind == "V":  # ml_dtypes' bfloat16/float8: through float32, which holds each value exactly
        array = array.astype(np.float32)
    t = torch.from_numpy(np.array(array))  # a copy: a JAX array's numpy view is read-only
    return t.to(kind) if isinstance(kind, torch.dtype) else t


class _BinaryStepFn(torch.autograd.Function):
    """1 where x >= 0, else 0; NaN stays NaN; the gradient is 0 everywhere (not undefined)."""

    @staticmethod
    def forward(ctx, x):
        return torch.where(torch.isnan(x), x, (x >= 0).to(x.dtype))

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


def binary_step(x: torch.Tensor) -> torch.Tensor:
    x = _check("binary_step", x)
    return _BinaryStepFn.apply(x)


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    x = _check("sigmoid", x)
    return torch.sigmoid(x)  # stable for |x| large: no overflow to NaN at -1e4


def tanh(x: torch.Tensor) -> torch.Tensor:
    x = _check("tanh", x)
    return torch.tanh(x)


def relu(x: torch.Tensor) -> torch.Tensor:
    x = _check("relu", x)
    return torch.relu(x)  # ReLU'(0) = 0


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    x = _check("softmax", x)
    dim = check_dim(dim, x.dim())
    return torch.softmax(x, dim=dim)  # subtracts the max first, so 1e4 does not overflow


ACTIVATION_FUNCTIONS = {"relu": relu, "sigmoid": sigmoid, "tanh": tanh, "binary_step": binary_step}


class BinaryStep(nn.Module):
    """Module form of binary_step, so it can sit in nn.Sequential like nn.ReLU."""

    def forward(self, x):
        return binary_step(x)


# Module per activation name; nn.ReLU etc. keep print(model) exactly as in the tutorial.
ACTIVATION_MODULES = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "binary_step": BinaryStep}


# ----------------------------------------------------------------------------- device


def get_device() -> str:
    """The tutorial's choice: "cuda", then "mps", then "cpu"."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(name: str = "auto") -> torch.device:
    """Config device ("auto", "cpu", "gpu") -> torch.device; "gpu" without one is a clear error."""
    if name == "auto":
        return torch.device(get_device())
    if name == "cpu":
        return torch.device("cpu")
    if name == "gpu":
        if not torch.cuda.is_available():
            raise DeviceError("--device gpu was asked for, but torch sees no CUDA device")
        return torch.device("cuda")
    raise ValueError(f"unknown device {name!r}; choose auto, cpu or gpu")


def set_matmul_precision(precision: str) -> None:
    """ "highest" (fp32, TF32 off: the parity mode) or "tf32" (TensorFloat-32 matmuls on CUDA)."""
    tf32 = {"highest": False, "tf32": True}[precision]
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


def set_threads(threads: int) -> int:
    """Use `threads` intra-op CPU threads (torch.set_num_threads); returns the count before.

    Never called on import: a library keeps torch's defaults unless asked. The command line's
    --threads applies a policy (fashion_common/runtime.py) that also sets how idle OpenMP workers
    wait, which only the environment can do, before torch starts.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    return previous


# ----------------------------------------------------------------------------- the network


class NeuralNetwork(nn.Module):
    """Flatten -> Linear(784, 512) -> ReLU -> Linear(512, 512) -> ReLU -> Linear(512, 10); returns logits.

    Attribute names and state_dict keys are the tutorial's: `flatten`, `linear_relu_stack.{0,2,4}.*`.
    """

    def __init__(self, spec: ModelSpec = DEFAULT_SPEC):
        super().__init__()
        self.spec = spec
        self.flatten = nn.Flatten()
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(spec.layer_sizes):
            if i:
                layers.append(ACTIVATION_MODULES[spec.activation]())
            layers.append(nn.Linear(fan_in, fan_out))  # torch default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        if spec.output_activation is not None:
            layers.append(ACTIVATION_MODULES[spec.output_activation]())
        self.linear_relu_stack = nn.Sequential(*layers)

    def _as_input(self, x) -> torch.Tensor:
        """The shared input rule: a tensor, or anything np.asarray takes, then check_input.

        Anything np.asarray takes is converted onto the model's device.

        The flax twin takes the same inputs (its own arrays, or anything np.asarray takes), so a NumPy
        batch works in both and a bad one fails alike, before any conversion can change its dtype.
        """
        if not isinstance(x, torch.Tensor):  # numpy, a list, a JAX array, ml_dtypes' bfloat16 (fashion_common.inputs)
            x, name, floating = to_numpy(x)
            check_input(x.shape, name, floating, self.spec.image_size)
            x = torch.from_numpy(np.array(x, dtype=np.float32))  # a writable copy: a JAX array's view is read-only
            x = x.to(next(self.parameters()).device)
        check_input(x.shape, str(x.dtype).replace("torch.", ""), x.is_floating_point(), self.spec.image_size)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._as_input(x)
        # (N, 784); inputs are cast to the weights' dtype: float32 (a no-op for float32 input) unless the
        # model was .double()'d (the float64 lockstep); the flax twin's Dense promotes the same way
        x = self.flatten(x.to(self.linear_relu_stack[0].weight.dtype))
        logits = self.linear_relu_stack(x)  # (N, 10)
        return logits

    def layer_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every intermediate, keyed by stack position: {"flatten": (N, 784), "0": (N, 512), ..., "4": (N, 10)}."""
        x = self._as_input(x)
        outputs = {"flatten": self.flatten(x.to(self.linear_relu_stack[0].weight.dtype))}
        h = outputs["flatten"]
        for i, layer in enumerate(self.linear_relu_stack):
            h = layer(h)
            outputs[str(i)] = h
        return outputs


def create_model(spec: ModelSpec = DEFAULT_SPEC, seed: int | None = 0, device="cpu") -> NeuralNetwork:
    """A fresh NeuralNetwork on `device`; the seed makes torch's default init repeatable."""
    seed = check_seed(seed)  # the flax twin's rule and words
    if seed is not None:
        torch.manual_seed(seed)
    return NeuralNetwork(spec).to(device)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def summary(model: NeuralNetwork, batch_size: int = 1) -> str:
    """print(model), then a table of each layer's output shape and parameter count."""
    device = next(model.parameters()).device
    with torch.no_grad():
        outputs = model.layer_outputs(torch.zeros(batch_size, *model.spec.image_size, device=device))
    rows = [("flatten", "Flatten", tuple(outputs["flatten"].shape), 0)]
    for i, layer in enumerate(model.linear_relu_stack):
        n = sum(p.numel() for p in layer.parameters())
        rows.append((f"linear_relu_stack.{i}", type(layer).__name__, tuple(outputs[str(i)].shape), n))
    return str(model) + "\n" + format_summary_rows(rows)
