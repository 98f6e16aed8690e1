"""Weights in and out of the one canonical format (see fashion_common/checkpoint.py).

Mirrors fashion_flax/checkpoint.py. The torch layout *is* the canonical layout, so no transposes here.
"""

from __future__ import annotations

import numpy as np
import torch

from fashion_common import checkpoint as canonical
from fashion_common.spec import DEFAULT_SPEC, ModelSpec

from .model import NeuralNetwork
from .pth import read_pth


def to_state_dict(model: NeuralNetwork) -> dict[str, np.ndarray]:
    """Model -> canonical numpy state_dict (float32, weight [out, in]); asserts keys and shapes."""
    state = {k: v.detach().to("cpu", torch.float32).numpy().copy() for k, v in model.state_dict().items()}
    canonical.validate_state(state, model.spec)
    return state


def from_state_dict(state_dict, spec: ModelSpec = DEFAULT_SPEC, device="cpu") -> NeuralNetwork:
    """Canonical state_dict (numpy arrays or tensors) -> a new model; asserts keys and shapes first."""
    state = {
        k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in state_dict.items()
    }
    canonical.validate_state(state, spec)
    model = NeuralNetwork(spec)
    model.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}, strict=True)
    return model.to(device)


def save_checkpoint(model: NeuralNetwork, path, metadata: dict | None = None):
    """Write the model's weights to `path` (safetensors, atomically). Returns the path."""
    return canonical.write_state(path, to_state_dict(model), model.spec, metadata)


def load_checkpoint(path, device="cpu", spec: ModelSpec | None = None) -> NeuralNetwork:
    """Read a canonical checkpoint written by either twin; bad files raise CheckpointError and build nothing."""
    if canonical.is_torch_pickle(path):  # the tutorial's torch.save(state_dict) file, read with weights_only=True
        state, spec = read_pth(path), spec or DEFAULT_SPEC
        canonical.validate_state(state, spec, source=str(path))
        return from_state_dict(state, spec, device)
    state, spec = canonical.read_state(path, spec)
    return from_state_dict(state, spec, device)
