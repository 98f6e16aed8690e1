"""The tutorial's own weights file: `torch.save(model.state_dict(), "model_weights.pth")`, read safely.

The "Save and load the model" tutorial pickles a state_dict. Reading it uses
`torch.load(..., weights_only=True)`, torch's restricted unpickler: tensors, dicts and a few
plain types load, anything else (a `__reduce__` calling os.system, a whole pickled module) is
refused without being executed. `fashion-twins convert` turns such a file into the canonical
safetensors checkpoint, and back (write_pth).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch

from fashion_common.errors import CheckpointError


def read_pth(path) -> dict[str, np.ndarray]:
    """Read a torch.save'd state_dict with the restricted unpickler -> {key: float32 numpy array}.

    Raises CheckpointError for a missing file, a file the restricted unpickler refuses (a whole
    pickled model, or a malicious pickle: never executed), or anything that is not a flat dict of
    floating-point tensors. Keys and shapes are checked later, against the spec, by the caller.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file" if not path.exists() else f"{path} is not a regular file")
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 5": the refusal below says what matters
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (bad zip), EOFError, ... : one message
        raise CheckpointError(
            f"{path} is not a state_dict torch can load safely (torch.load with weights_only=True refused it: "
            f"{_reason(e)}); "
            "save model.state_dict(), not the model"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state_dict (a dict of tensors); save model.state_dict()"
        )
    state = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            what = type(value).__name__
            raise CheckpointError(f"{path}: entry {key!r} is a {what}, not a tensor; expected model.state_dict()")
        if value.dtype != torch.float32:  # the rule of the safetensors reader too: no silent cast, up or down
            dtype = str(value.dtype).removeprefix("torch.")
            raise CheckpointError(f"{path}: key {key!r} has dtype {dtype}, expected float32")
        state[key] = value.detach().numpy().copy()
    return state


def write_pth(path, state: dict[str, np.ndarray]) -> Path:
    """Write a state_dict as the tutorial saves one: torch.save of a plain dict of float32 CPU tensors.

    Nothing but tensors is pickled, so torch.load(path, weights_only=True) reads it, and the tutorial's class
    takes it with load_state_dict(strict=True). Written atomically (a crash leaves any old file whole).
    """
    import io

    from fashion_common.checkpoint import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save({key: torch.from_numpy(np.array(value, dtype=np.float32)) for key, value in state.items()}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def _reason(e: Exception) -> str:
    """The useful part of torch's long weights_only message (`unsupported GLOBAL posix.system ...`), no ANSI codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    match = re.search(r"(Unsupported global: GLOBAL \S+|unsupported GLOBAL \S+[^.\n]*|Unsupported operand \d+)", text)
    if match:
        return match.group(1).rstrip(".")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__)[:160]
