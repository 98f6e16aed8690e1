"""The tutorial's Fashion-MNIST MLP in PyTorch. Twin of fashion_flax; never imports JAX."""

from fashion_common.errors import CheckpointError, InputDtypeError, InputShapeError
from fashion_common.spec import CLASS_NAMES, DEFAULT_SPEC, ModelSpec

from .checkpoint import from_state_dict, load_checkpoint, save_checkpoint, to_state_dict
from .model import (
    NeuralNetwork,
    binary_step,
    count_parameters,
    create_model,
    get_device,
    relu,
    resolve_device,
    set_matmul_precision,
    sigmoid,
    softmax,
    summary,
    tanh,
)

BACKEND = "torch"

__all__ = [
    "CheckpointError",
    "InputDtypeError",
    "InputShapeError",
    "CLASS_NAMES",
    "DEFAULT_SPEC",
    "ModelSpec",
    "from_state_dict",
    "load_checkpoint",
    "save_checkpoint",
    "to_state_dict",
    "NeuralNetwork",
    "binary_step",
    "count_parameters",
    "create_model",
    "get_device",
    "relu",
    "resolve_device",
    "set_matmul_precision",
    "sigmoid",
    "softmax",
    "summary",
    "tanh",
    "BACKEND",
]
