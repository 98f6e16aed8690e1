"""The tutorial's Fashion-MNIST MLP in Flax NNX. Twin of fashion_torch and fashion_flax; never imports torch.

A sibling package of fashion_flax (not inside it), so that fashion_torch/x.py, fashion_flax/x.py and
fashion_nnx/x.py mirror each other file for file. It imports fashion_flax's framework-level JAX pieces
that must be identical in both Flax twins (the activations, the init law, the device choice and
precision, the shifts, the loss and the optimizer): one framework family, one copy of each.
"""

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
    set_threads,
    sigmoid,
    softmax,
    summary,
    tanh,
)

BACKEND = "nnx"

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
    "set_threads",
    "sigmoid",
    "softmax",
    "summary",
    "tanh",
    "BACKEND",
]
