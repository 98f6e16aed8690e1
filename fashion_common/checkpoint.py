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
import re
import secrets
import stat
import time
from pathlib import Path

import numpy as np

from .errors import CheckpointError, WriteError
from .spec import ACTIVATIONS, DEFAULT_SPEC, TWINS, ModelSpec, checkpoint_shapes

FORMAT_NAME = "fashion-twins/canonical-v1"


def validate_state(state: dict[str, np.ndarray], spec: ModelSpec = DEFAULT_SPEC, source: str = "state_dict") -> None:
    """Assert the key set and every shape against the spec; the error names the offending key."""
    expected = checkpoint_shapes(spec)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing:
        raise CheckpointError(
            f"{source}: missing key {missing[0]!r}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    if extra:
        raise CheckpointError(
            f"{source}: unexpected key {extra[0]!r}" + (f" (+{len(extra) - 1} more)" if len(extra) > 1 else "")
        )
    for key, shape in expected.items():
        got = tuple(np.shape(state[key]))
        if got != shape:
            raise CheckpointError(f"{source}: key {key!r} has shape {got}, expected {shape}")


# A temp file is `.NAME.PID.RANDOM.tmp` beside its target: the pid tells a later write whether the
# writer is still alive. One whose pid is dead, or older than this, was left by a killed process.
STALE_TEMP_SECONDS = 15 * 60


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # exists but is another user's (or a nonsense pid, handled by age)
    return True


def remove_stale_temps(path) -> list:
    """Remove temp files of `path` left by killed writers (dead pid, or older than STALE_TEMP_SECONDS); returns them.

    A live writer's temp (its pid runs, the file is recent) is left alone, so two processes
    writing the same target never delete each other's work in progress.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    prefix, removed = _temp_prefix(path), []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        middle = name[len(prefix) : -len(".tmp")]  # "PID.RANDOM", or mkstemp's "RANDOM" from older versions
        pid_text = middle.split(".", 1)[0]
        temp = folder / name
        try:
            age = now - temp.lstat().st_mtime
        except OSError:
            continue
        dead = pid_text.isdigit() and not _pid_alive(int(pid_text))
        if dead or age > STALE_TEMP_SECONDS:
            try:
                temp.unlink()
                removed.append(temp)
            except OSError:
                pass
    return removed


def atomic_write_bytes(path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a crash leaves the old file or the new one.

    The new file gets the mode a plain open() would give (0o666 less the umask), or the mode of the
    file it replaces. Temps of killed earlier writers are removed after a successful write. Any
    failure raises one WriteError naming `path`, removes this write's temp and leaves the old file whole.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise WriteError(f"cannot write {path}: folder {folder} does not exist")
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)  # replacing: keep the file's mode
    except OSError:
        mode = None  # a new file: 0o666 & ~umask, applied by os.open itself
    tmp = folder / f"{_temp_prefix(path)}{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise _write_error(path, e) from None
        raise  # KeyboardInterrupt and the like pass through unchanged
    remove_stale_temps(path)


def _write_error(path, e: OSError) -> WriteError:
    """One line naming the target (not the temp file), e.g. `cannot write m.safetensors: No space left on device`."""
    error = WriteError(f"cannot write {path}: {e.strerror or e}")
    error.errno = e.errno
    return error


def _serialize(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata)


# torch.save writes a zip archive (since torch 1.6) or, with the legacy format, a bare pickle
# (protocol 2+ starts with byte 0x80 and the protocol number).
_ZIP_MAGIC = b"PK\x03\x04"


def _looks_like_torch_pickle(head: bytes, size: int) -> bool:
    """True for torch.save's zip or legacy pickle, checked only where the bytes are not a plausible safetensors file."""
    if len(head) >= 9:
        header_len = int.from_bytes(head[:8], "little")
        if 0 < header_len <= size - 8 and head[8:9] == b"{":
            return False  # a safetensors header: 8-byte length, then JSON
    return head.startswith(_ZIP_MAGIC) or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _check_file(path: Path, what: str) -> int:
    """os.stat before any open: a folder, FIFO or device gets a precise error at once (open() on a FIFO would block)."""
    from .paths import file_kind

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{what} not found: {path}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {what} {path}: {e.strerror or e}") from None
    kind = file_kind(st.st_mode)
    if kind == "directory":
        raise CheckpointError(f"{what} {path} is a directory, not a file")
    if kind != "file":
        raise CheckpointError(f"{what} {path} is not a regular file ({kind})")
    return st.st_size


def _read(path, what: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file; any failure becomes one CheckpointError naming the file."""
    from safetensors import safe_open

    path = Path(path)
    size = _check_file(path, what)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise CheckpointError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if _looks_like_torch_pickle(head, size):
        raise CheckpointError(
            f"{path} is a PyTorch pickle (torch.save), not a safetensors {what}; "
            f"convert it with `fashion-twins convert {path} OUT.safetensors`"
        )
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for truncated or foreign files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is not a readable safetensors {what} ({reason})") from None
    return tensors, metadata


# ----------------------------------------------------------------------------- header fields
# Every header value is a string (safetensors allows nothing else). Each field is checked for its
# form and range here, so a bad one is a CheckpointError naming the field, never an IndexError or
# a misleading shape error later. 2**31 - 1 bounds every size: what an int32 shape can hold.

MAX_SIZE = 2**31 - 1
SPEC_FIELDS = ("image_size", "hidden_sizes", "num_classes", "activation", "output_activation")
_INT = re.compile(r"[0-9]{1,10}")  # plain decimal digits: no sign, spaces, underscores or 1e3


def _field_error(path, field: str, value, expected: str) -> CheckpointError:
    shown = value if len(str(value)) <= 60 else str(value)[:57] + "..."
    return CheckpointError(f"{path}: header field {field!r} is {shown!r}; expected {expected}")


def _header_int(path, field: str, value, low: int, high: int = MAX_SIZE) -> int:
    if not isinstance(value, str) or not _INT.fullmatch(value) or not low <= int(value) <= high:
        raise _field_error(path, field, value, f"an integer from {low} to {high}")
    return int(value)


def _header_ints(path, field: str, value, count: int | None, low: int = 1) -> tuple[int, ...]:
    parts = value.split(",") if isinstance(value, str) else None
    expected = (
        f"{count} comma-separated integers from {low} to {MAX_SIZE}"
        if count
        else f"comma-separated integers from {low} to {MAX_SIZE}"
    )
    if not parts or (count is not None and len(parts) != count) or len(parts) > 64:
        raise _field_error(path, field, value, expected)
    if not all(_INT.fullmatch(p) and low <= int(p) <= MAX_SIZE for p in parts):
        raise _field_error(path, field, value, expected)
    return tuple(int(p) for p in parts)


def _header_choice(path, field: str, value, choices) -> str:
    if value not in choices:
        raise _field_error(path, field, value, "one of " + ", ".join(choices))
    return value


def spec_from_header(metadata: dict[str, str], path="checkpoint") -> ModelSpec | None:
    """The spec a header states, every field validated; None when the header states no spec at all.

    A header with any spec field must have all but `output_activation` (default "none").
    """
    if not any(field in metadata for field in SPEC_FIELDS):
        return None
    for field in SPEC_FIELDS[:4]:
        if field not in metadata:
            raise CheckpointError(f"{path}: header field {field!r} is missing (the header has other model spec fields)")
    out = _header_choice(path, "output_activation", metadata.get("output_activation", "none"), ("none",) + ACTIVATIONS)
    return ModelSpec(
        image_size=_header_ints(path, "image_size", metadata["image_size"], 2),
        hidden_sizes=_header_ints(path, "hidden_sizes", metadata["hidden_sizes"], None),
        num_classes=_header_int(path, "num_classes", metadata["num_classes"], 1),
        activation=_header_choice(path, "activation", metadata["activation"], ACTIVATIONS),
        output_activation=None if out == "none" else out,
    )


def check_header(metadata: dict[str, str], path="checkpoint", expected_format: str = FORMAT_NAME) -> None:
    """Validate the non-spec fields: `format` (ours must be this version; foreign tags like "pt" pass) and `step`."""
    fmt = metadata.get("format")
    if fmt is not None and (not isinstance(fmt, str) or fmt.startswith("fashion-twins/")) and fmt != expected_format:
        if fmt == FORMAT_NAME + "/train-state":
            raise CheckpointError(
                f"{path} is a training-state sidecar, not a model checkpoint; give the checkpoint beside it"
            )
        raise _field_error(path, "format", fmt, repr(expected_format))
    if "step" in metadata:
        _header_int(path, "step", metadata["step"], 0, 2**63 - 1)


def check_finite(tensors: dict[str, np.ndarray], path) -> None:
    """Refuse weights holding NaN or Inf: they would predict garbage (10 % accuracy, `nan%` losses) with exit 0."""
    for key, value in tensors.items():
        bad = ~np.isfinite(value)
        if bad.any():
            raise CheckpointError(
                f"{path}: tensor {key!r} holds {int(bad.sum())} non-finite values (NaN or Inf) of {value.size}; "
                "the training that wrote it diverged"
            )


def write_state(
    path, state: dict[str, np.ndarray], spec: ModelSpec = DEFAULT_SPEC, extra_metadata: dict | None = None
) -> Path:
    """Validate and atomically write a canonical model checkpoint."""
    validate_state(state, spec)
    metadata = {"format": FORMAT_NAME, **spec.to_metadata(), **(extra_metadata or {})}
    tensors = {k: np.asarray(v, dtype=np.float32) for k, v in state.items()}
    atomic_write_bytes(path, _serialize(tensors, metadata))
    return Path(path)


def read_state(
    path, spec: ModelSpec | None = None, allow_nonfinite: bool = False
) -> tuple[dict[str, np.ndarray], ModelSpec]:
    """Read and validate a canonical checkpoint; returns (state, spec).

    With spec=None the spec comes from the file's header (the default spec if the header has
    none, as for a file saved from the tutorial's class with safetensors.torch.save_file).
    Every header field is validated even when `spec` is given. NaN or Inf weights raise
    CheckpointError naming the tensor unless allow_nonfinite=True (for inspecting a diverged run).
    """
    tensors, metadata = _read(path, "checkpoint")
    check_header(metadata, path)
    file_spec = spec_from_header(metadata, path) or DEFAULT_SPEC
    spec = spec or file_spec
    validate_state(tensors, spec, source=str(path))
    for key, value in tensors.items():
        if value.dtype != np.float32:
            raise CheckpointError(f"{path}: key {key!r} has dtype {value.dtype}, expected float32")
    if not allow_nonfinite:
        check_finite(tensors, path)
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


def write_train_state(path, slots: dict[str, np.ndarray], counters: dict) -> Path:
    """Write optimizer slots (canonical layout, `<slot>/<key>`) and JSON counters beside a checkpoint."""
    metadata = {"format": FORMAT_NAME + "/train-state", "counters": json.dumps(counters, sort_keys=True)}
    side = train_state_path(path)
    atomic_write_bytes(side, _serialize(slots, metadata))
    return side


def read_train_state(path) -> tuple[dict[str, np.ndarray], dict]:
    """Read the sidecar written by write_train_state; returns (slots, counters)."""
    side = train_state_path(path)
    slots, metadata = _read(side, "training state")
    check_header(metadata, side, FORMAT_NAME + "/train-state")
    if "counters" not in metadata:
        raise CheckpointError(f"{side}: no training counters in header")
    try:
        counters = json.loads(metadata["counters"])
    except (ValueError, RecursionError):
        raise CheckpointError(f"{side}: header field 'counters' is not valid JSON") from None
    check_counters(counters, side)
    return slots, counters


# counters field -> (type, what it must be); ints are non-negative and never bool.
COUNTER_FIELDS = {
    "backend": (str, "'torch', 'flax' or 'nnx'"),
    "epoch": (int, "an integer >= 0"),
    "step": (int, "an integer >= 0"),
    "optimizer_step": (int, "an integer >= 0"),
    "config": (dict, "a JSON object"),
    "history": (list, "a JSON list of per-epoch objects"),
}


def check_counters(counters, side="training state") -> None:
    """Validate the sidecar's counters JSON, field by field: type and range; the error names the field."""
    if not isinstance(counters, dict):
        raise CheckpointError(f"{side}: header field 'counters' is {type(counters).__name__}; expected a JSON object")
    for field, (kind, expected) in COUNTER_FIELDS.items():
        if field not in counters:
            raise CheckpointError(f"{side}: counters field {field!r} is missing")
        value = counters[field]
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if ok and kind is int:
            ok = 0 <= value <= 2**63 - 1
        if ok and field == "backend":
            ok = value in TWINS
        if ok and field == "history":
            ok = all(isinstance(row, dict) for row in value) and len(value) == counters.get("epoch")
            expected = "a JSON list of one object per finished epoch"
        if not ok:
            shown = json.dumps(value)[:60]
            raise CheckpointError(f"{side}: counters field {field!r} is {shown}; expected {expected}")


def check_pair(path, counters: dict) -> None:
    """Refuse weights and a sidecar from different saves (a crash between the two renames)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        step = (f.metadata() or {}).get("step")
    if step is not None and int(step) != int(counters["optimizer_step"]):
        raise CheckpointError(
            f"{path} (step {step}) and {train_state_path(path)} (step {counters['optimizer_step']}) do not belong together"
        )


def read_metadata(path) -> dict[str, str] | None:
    """The `__metadata__` of a safetensors header, read without the tensors; None where there is no such header
    (a missing file, a FIFO or folder, a torch pickle, garbage). Validate it with spec_from_header/check_header."""
    import stat
    import struct

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None  # a FIFO would block open() forever; the reader reports what it is
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100_000_000:  # safetensors' own header limit
                return None
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return None
    metadata = header.get("__metadata__", {}) if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else None


def header_has_spec(path) -> bool:
    """True if the safetensors header holds a model spec (every file the twins write); False for a user's own
    save_file or a non-safetensors file. The same rule as spec_from_header: any spec field means a spec."""
    metadata = read_metadata(path)
    return metadata is not None and any(field in metadata for field in SPEC_FIELDS)


def is_torch_pickle(path) -> bool:
    """True if the file starts like a torch.save file (zip archive or legacy pickle) and not like safetensors."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False  # a FIFO would block open() forever; the reader says what it is
        with open(path, "rb") as f:
            head = f.read(16)
        return _looks_like_torch_pickle(head, os.path.getsize(path))
    except OSError:
        return False
