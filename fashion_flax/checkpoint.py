"""Weights in and out of the one canonical format (see fashion_common/checkpoint.py).

Mirrors fashion_torch/checkpoint.py. The canonical layout is torch's, so every kernel is
transposed on the way out and back in: Dense kernel [in, out] <-> Linear weight [out, in].
"""

from __future__ import annotations

import jax
import numpy as np
from flax.core import unfreeze

from fashion_common import checkpoint as canonical
from fashion_common.errors import CheckpointError
from fashion_common.spec import DEFAULT_SPEC, ModelSpec, checkpoint_keys, flax_param_path

from .model import NeuralNetwork, _shared_model


def to_state_dict(params, spec: ModelSpec = DEFAULT_SPEC) -> dict[str, np.ndarray]:
    """Flax params -> canonical numpy state_dict (float32, weight [out, in]); asserts keys and shapes.

    params: the param tree, the variables {"params": tree}, or a bound NeuralNetwork (load_checkpoint's).
    """
    if isinstance(params, NeuralNetwork) and params.scope is not None:  # bound: its variables
        params = params.variables
    tree = unfreeze(params)
    tree = tree.get("params", tree)
    flat = {
        "/".join(str(getattr(k, "key", k)) for k in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }
    state = {}
    for key in checkpoint_keys(spec):
        path = "/".join(flax_param_path(key))
        if path not in flat:
            raise CheckpointError(f"params: missing {path!r} (canonical key {key!r})")
        value = np.asarray(jax.device_get(flat.pop(path)), dtype=np.float32)
        state[key] = value.T.copy() if key.endswith(".weight") else value  # kernel [in, out] -> weight [out, in]
    if flat:
        raise CheckpointError(f"params: unexpected leaf {sorted(flat)[0]!r}")
    canonical.validate_state(state, spec, source="params")
    return state


def from_state_dict(state_dict, spec: ModelSpec = DEFAULT_SPEC, device=None):
    """Canonical state_dict (numpy arrays, or anything np.asarray takes) -> Flax params.

    Asserts keys and shapes first.
    """
    state = {k: np.asarray(v.detach().cpu() if hasattr(v, "detach") else v) for k, v in state_dict.items()}
    canonical.validate_state(state, spec)
    tree: dict = {}
    for key in checkpoint_keys(spec):
        stack, layer, kind = flax_param_path(key)
        value = np.array(state[key], dtype=np.float32)
        tree.setdefault(stack, {}).setdefault(layer, {})[kind] = value.T.copy() if kind == "kernel" else value
    params = {"params": tree}
    return jax.device_put(params, device) if device is not None else jax.device_put(params)


def save_checkpoint(params, path, spec: ModelSpec = DEFAULT_SPEC, metadata: dict | None = None):
    """Write the params (or a bound NeuralNetwork, with its own spec) to `path` in the canonical layout.

    Returns the path.
    """
    if isinstance(params, NeuralNetwork) and params.scope is not None:
        spec = params.spec
    return canonical.write_state(path, to_state_dict(params, spec), spec, metadata)


def load_checkpoint(path, device=None, spec: ModelSpec | None = None) -> NeuralNetwork:
    """Read a canonical checkpoint written by any twin -> a bound NeuralNetwork; bad files raise CheckpointError.

    Bound (`module.bind(variables)`), so it is called like the torch twin's module, `model(x)`, and
    `model.unbind()` gives (module, variables) back for jitted use.
    """
    state, spec = canonical.read_state(path, spec)
    return _shared_model(spec, "torch").bind(from_state_dict(state, spec, device))
