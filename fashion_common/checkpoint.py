"""The one checkpoint format, framework-free: a safetensors file holding the tutorial class's state_dict.

Keys are `linear_relu_stack.{0,2,4}.{weight,bias}`, float32, torch layout (weight [out, in]).
The model spec rides in the safetensors header as strings. Both twins convert to and from the
numpy dict this module reads and writes; nothing here or there ever unpickles.

Training state (optimizer slots, step count) goes in a sidecar `<name>.state.safetensors`, so
the model file stays loadable with `load_state_dict(..., strict=True)` into the tutorial's class.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from .errors import CheckpointError
from .spec import DEFAULT_SPEC, ModelSpec, checkpoint_shapes

FORMAT_NAME = "fashion-twins/canonical-v1"


def validate_state(state: Dict[str, np.ndarray], spec: ModelSpec = DEFAULT_SPEC, source: str = "state_dict") -> None:
    """Assert the key set and every shape against the spec; the error names the offending key."""
    expected = checkpoint_shapes(spec)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing:
        raise CheckpointError(f"{source}: missing key {missing[0]!r}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
    if extra:
        raise CheckpointError(f"{source}: unexpected key {extra[0]!r}" + (f" (+{len(extra) - 1} more)" if len(extra) > 1 else ""))
    for key, shape in expected.items():
        got = tuple(np.shape(state[key]))
        if got != shape:
            raise CheckpointError(f"{source}: key {key!r} has shape {got}, expected {shape}")


def atomic_write_bytes(path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a crash leaves the old file or the new one."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise CheckpointError(f"cannot write {path}: folder {folder} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _serialize(tensors: Dict[str, np.ndarray], metadata: Dict[str, str]) -> bytes:
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata)


def _read(path, what: str) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """Read a safetensors file; any failure becomes one CheckpointError naming the file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for truncated or foreign files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is not a readable safetensors {what} ({reason})") from None
    return tensors, metadata


def write_state(path, state: Dict[str, np.ndarray], spec: ModelSpec = DEFAULT_SPEC, extra_metadata: Optional[dict] = None) -> Path:
    """Validate and atomically write a canonical model checkpoint."""
    validate_state(state, spec)
    metadata = {"format": FORMAT_NAME, **spec.to_metadata(), **(extra_metadata or {})}
    tensors = {k: np.asarray(v, dtype=np.float32) for k, v in state.items()}
    atomic_write_bytes(path, _serialize(tensors, metadata))
    return Path(path)


def read_state(path, spec: Optional[ModelSpec] = None) -> Tuple[Dict[str, np.ndarray], ModelSpec]:
    """Read and validate a canonical checkpoint; returns (state, spec).

    With spec=None the spec comes from the file's header (the default spec if the header has
    none, as for a file saved from the tutorial's class with safetensors.torch.save_file).
    """
    tensors, metadata = _read(path, "checkpoint")
    file_spec = DEFAULT_SPEC
    if "hidden_sizes" in metadata:
        try:
            file_spec = ModelSpec.from_metadata(metadata)
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: bad model spec in header ({e})") from None
    spec = spec or file_spec
    validate_state(tensors, spec, source=str(path))
    for key, value in tensors.items():
        if value.dtype != np.float32:
            raise CheckpointError(f"{path}: key {key!r} has dtype {value.dtype}, expected float32")
    return tensors, spec


def _beside(path, suffix: str) -> Path:
    """CKPT.safetensors -> CKPT<suffix>, in the same folder."""
    path = Path(path)
    stem = path.name[: -len(".safetensors")] if path.name.endswith(".safetensors") else path.name
    return path.with_name(stem + suffix)


def train_state_path(path) -> Path:
    """CKPT.safetensors -> CKPT.state.safetensors (optimizer slots and counters live beside the weights)."""
    return _beside(path, ".state.safetensors")


def metrics_path_for(path) -> Path:
    """CKPT.safetensors -> CKPT.metrics.json, the scripts' default METRICS.json beside a checkpoint."""
    return _beside(path, ".metrics.json")


def write_train_state(path, slots: Dict[str, np.ndarray], counters: dict) -> Path:
    """Write optimizer slots (canonical layout, `<slot>/<key>`) and JSON counters beside a checkpoint."""
    metadata = {"format": FORMAT_NAME + "/train-state", "counters": json.dumps(counters, sort_keys=True)}
    side = train_state_path(path)
    atomic_write_bytes(side, _serialize(slots, metadata))
    return side


def read_train_state(path) -> Tuple[Dict[str, np.ndarray], dict]:
    """Read the sidecar written by write_train_state; returns (slots, counters)."""
    side = train_state_path(path)
    slots, metadata = _read(side, "training state")
    try:
        counters = json.loads(metadata["counters"])
    except (KeyError, ValueError):
        raise CheckpointError(f"{side}: no training counters in header") from None
    return slots, counters


def check_pair(path, counters: dict) -> None:
    """Refuse weights and a sidecar from different saves (a crash between the two renames)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        step = (f.metadata() or {}).get("step")
    if step is not None and int(step) != int(counters["optimizer_step"]):
        raise CheckpointError(f"{path} (step {step}) and {train_state_path(path)} (step {counters['optimizer_step']}) do not belong together")


def header_has_spec(path) -> bool:
    """True if the safetensors header holds a model spec (every file the twins write); False for a user's own save_file or a non-safetensors file."""
    import stat
    import struct

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False  # a FIFO would block open() forever; the reader reports what it is
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100_000_000:  # safetensors' own header limit
                return False
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return False
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(metadata, dict) and "hidden_sizes" in metadata
