"""Weights in and out of the one canonical format (see fashion_common/checkpoint.py).

Mirrors fashion_torch/checkpoint.py and fashion_flax/checkpoint.py. The canonical layout is torch's,
so every kernel is transposed on the way out and back in: Linear kernel [in, out] <-> weight [out, in].
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from fashion_common import checkpoint as canonical
from fashion_common.errors import CheckpointError
from fashion_common.spec import DEFAULT_SPEC, ModelSpec, checkpoint_keys, nnx_param_path

from .model import NeuralNetwork


def _path_name(path) -> str:
    """A state path as text: ('linear_relu_stack', 'layers', 0, 'kernel') -> 'linear_relu_stack/layers/0/kernel'."""
    return "/".join(str(getattr(k, "key", k)) for k in path)


def to_state_dict(model, spec: ModelSpec | None = None) -> dict[str, np.ndarray]:
    """NNX model (or a param State, e.g. nnx.grad's gradients) -> canonical numpy state_dict; asserts keys and shapes.

    The spec is the model's own; pass it for a bare State (default: the tutorial's).
    """
    if isinstance(model, nnx.Module):
        spec = spec or model.spec
        model = nnx.state(model, nnx.Param)
    spec = spec or DEFAULT_SPEC
    tree = nnx.to_pure_dict(model) if isinstance(model, nnx.State) else model
    flat = {_path_name(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
    state = {}
    for key in checkpoint_keys(spec):
        path = _path_name(nnx_param_path(key))
        if path not in flat:
            raise CheckpointError(f"params: missing {path!r} (canonical key {key!r})")
        value = np.asarray(jax.device_get(flat.pop(path)), dtype=np.float32)
        state[key] = value.T.copy() if key.endswith(".weight") else value  # kernel [in, out] -> weight [out, in]
    if flat:
        raise CheckpointError(f"params: unexpected leaf {sorted(flat)[0]!r}")
    canonical.validate_state(state, spec, source="params")
    return state


def from_state_dict(state_dict, spec: ModelSpec = DEFAULT_SPEC, device=None) -> NeuralNetwork:
    """Canonical state_dict (numpy arrays, or what np.asarray takes) -> a new model; checks keys and shapes first."""
    state = {k: np.asarray(v.detach().cpu() if hasattr(v, "detach") else v) for k, v in state_dict.items()}
    canonical.validate_state(state, spec)
    tree: dict = {}
    for key in checkpoint_keys(spec):
        stack, layers, index, kind = nnx_param_path(key)
        value = np.array(state[key], dtype=np.float32)
        tree.setdefault(stack, {}).setdefault(layers, {}).setdefault(index, {})[kind] = (
            value.T.copy() if kind == "kernel" else value
        )
    tree = jax.device_put(tree, device) if device is not None else jax.device_put(tree)
    graphdef, params = nnx.split(_abstract_model(spec), nnx.Param)
    nnx.replace_by_pure_dict(params, tree)
    return nnx.merge(graphdef, params)


@functools.cache
def _abstract_model(spec: ModelSpec) -> NeuralNetwork:
    """The model's structure with shapes only (nnx.eval_shape draws no random numbers), built once per spec.

    Only split, never mutated: every from_state_dict merges a new module from it.
    """
    return nnx.eval_shape(lambda: NeuralNetwork(spec, rngs=nnx.Rngs(0)))


def save_checkpoint(model: NeuralNetwork, path, metadata: dict | None = None):
    """Write the model's weights to `path` in the canonical layout (safetensors, atomically). Returns the path."""
    return canonical.write_state(path, to_state_dict(model), model.spec, metadata)


def load_checkpoint(path, device=None, spec: ModelSpec | None = None) -> NeuralNetwork:
    """Read a canonical checkpoint written by any twin -> an nnx.Module; bad files raise CheckpointError."""
    state, spec = canonical.read_state(path, spec)
    return from_state_dict(state, spec, device)
