"""The one checkpoint format, framework-free: a safetensors file holding the tutorial class's state_dict.

Keys are `linear_relu_stack.{0,2,4}.{weight,bias}`, float32, torch layout (weight [out, in]).
The model spec rides in the safetensors header as strings. Both twins convert to and from the
numpy dict this module reads and writes; nothing here or there ever unpickles.

Training state (optimizer slots, step count) goes in a sidecar `<name>.state.safetensors`, so
the model file stays loadable with `load_state_dict(..., strict=True)` into the tutorial's class.

Crash consistency (write_checkpoint / read_checkpoint): the sidecar is complete on its own: it holds
the weights too, and is written first. So whichever rename a crash interrupts, the sidecar on disk
is one whole epoch and resume continues from it; the weights file is then that epoch or the one
before (it is rewritten after the next epoch). Both files carry the run's id: files of two runs are
refused, never mixed. Every file we write carries a sha256 of its tensors and header in its header
(DIGEST_FIELD), checked on every read. One run at a time writes a checkpoint: run_lock holds an
flock on `<name>.lock` beside it for the whole run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import CheckpointError, WriteError
from .spec import ACTIVATIONS, BACKENDS, CLASS_NAMES, DEFAULT_SPEC, ModelSpec, checkpoint_shapes

FORMAT_NAME = "fashion-twins/canonical-v1"


def validate_state(state: dict[str, np.ndarray], spec: ModelSpec = DEFAULT_SPEC, source: str = "state_dict") -> None:
    """Assert the key set and every shape against the spec; the error names the offending key.

    A state of another stack of Linear layers (the tutorial's class with other sizes, say 784-128-10) is named by
    its layer sizes instead: a missing key would not say that the file holds a different network.
    """
    expected = checkpoint_shapes(spec)
    held = linear_stack_sizes(state)
    supported = (spec.in_features, *spec.hidden_sizes, spec.num_classes)
    # Only against the tutorial's sizes: a header whose spec disagrees with its own tensors is named by the key.
    if held is not None and held != supported and spec.layer_sizes == DEFAULT_SPEC.layer_sizes:
        layers = f"{len(held) - 1} Linear layer{'s' if len(held) > 2 else ''}"
        raise CheckpointError(
            f"{source} holds a {'-'.join(map(str, held))} network ({layers}); fashion-twins "
            f"supports the tutorial's {'-'.join(map(str, supported))} (linear_relu_stack.0, .2, .4)"
        )
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


def linear_stack_sizes(state: dict[str, np.ndarray]) -> tuple[int, ...] | None:
    """(784, 128, 10) for a state of Linear layers chained in key order, each `<name>.weight` [out, in] with a
    `<name>.bias` [out]; None for anything else (a state the key and shape checks then describe)."""
    weights = [k for k in state if k.endswith(".weight")]
    if not weights or len(state) != 2 * len(weights):
        return None
    sizes = []
    for key in sorted(weights, key=_natural):  # linear_relu_stack.10 after .4
        weight, bias = np.shape(state[key]), np.shape(state.get(key[: -len("weight")] + "bias"))
        if len(weight) != 2 or bias != weight[:1] or (sizes and sizes[-1] != weight[1]):
            return None
        if not sizes:
            sizes.append(weight[1])  # the first layer's fan-in: the input size
        sizes.append(weight[0])
    return tuple(int(s) for s in sizes)


def _natural(key: str) -> list:
    """Sort key: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


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


# Tests set this to a callable(event, path) to kill the process at each durability point of a write:
# "fsync" (the temp's bytes), "rename" (temp -> target), "fsync-dir" (the rename itself). None in use.
FAULT_HOOK: Callable[[str, Path], None] | None = None


def _durability_point(event: str, path: Path) -> None:
    if FAULT_HOOK is not None:
        FAULT_HOOK(event, path)


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable: fsync the folder's entry table (best effort; some filesystems refuse it)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
            _durability_point("fsync", path)
            os.fsync(f.fileno())
        _durability_point("rename", path)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise _write_error(path, e) from None
        raise  # KeyboardInterrupt and the like pass through unchanged
    _durability_point("fsync-dir", path)
    _fsync_folder(folder)
    remove_stale_temps(path)


def _write_error(path, e: OSError) -> WriteError:
    """One line naming the target (not the temp file), e.g. `cannot write m.safetensors: No space left on device`."""
    error = WriteError(f"cannot write {path}: {e.strerror or e}")
    error.errno = e.errno
    return error


# ----------------------------------------------------------------------------- digest
# safetensors has no checksum of its own. Every file we write carries, in its header, a sha256 over
# each tensor (name, dtype, shape, bytes; sorted by name) and the other header fields, so a flipped
# bit anywhere in a tensor or a header value is caught on read (a flip in the JSON's syntax or the
# length prefix already fails to parse).
DIGEST_FIELD = "sha256"
_DIGEST_VALUE = re.compile(r"[0-9a-f]{64}")
_UNVERIFIED_NOTED: set[str] = set()


def content_digest(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> str:
    """sha256 hex of the tensors (sorted by name: name, dtype, shape, bytes) and the header fields but the digest."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        value = np.ascontiguousarray(tensors[key])
        h.update(json.dumps([key, value.dtype.str, list(value.shape)]).encode())
        h.update(memoryview(value.reshape(-1).view(np.uint8)))
    h.update(json.dumps({k: v for k, v in metadata.items() if k != DIGEST_FIELD}, sort_keys=True).encode())
    return h.hexdigest()


def _verify_digest(path: Path, what: str, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Raise CheckpointError naming the file if its bytes changed after writing; a file without a digest: one note."""
    stored = metadata.get(DIGEST_FIELD)
    if stored is None and any(isinstance(v, str) and _DIGEST_VALUE.fullmatch(v) for v in metadata.values()):
        stored = ""  # a digest under a damaged field name (one flipped bit in "sha256"): the file changed
    if stored is None:
        key = str(path)
        if key not in _UNVERIFIED_NOTED:  # once per file and process: a foreign file read every epoch says it once
            _UNVERIFIED_NOTED.add(key)
            print(
                f"note: {path} has no {DIGEST_FIELD} digest in its header (not written by fashion-twins); "
                "its bytes cannot be verified",
                file=sys.stderr,
                flush=True,
            )
        return
    if stored != content_digest(tensors, metadata):
        raise CheckpointError(
            f"{path}: the {what}'s bytes do not match the {DIGEST_FIELD} digest in its header; "
            "the file changed after it was written (a flipped bit, a partial copy or an edit)"
        )


def _serialize(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """safetensors bytes with the content digest added to the header."""
    from safetensors.numpy import save

    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    metadata = {**metadata, DIGEST_FIELD: content_digest(tensors, metadata)}
    return save(tensors, metadata=metadata)


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
    _verify_digest(path, what, tensors, metadata)
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


# What the twins' network can be, whatever a header says: Fashion-MNIST fixes its input (one 28x28
# grayscale image) and its output (the ten classes); hidden sizes and activations are the spec's choice.
MODEL_IMAGE_SIZE = DEFAULT_SPEC.image_size
MODEL_NUM_CLASSES = len(CLASS_NAMES)


def validate_header(
    metadata: dict[str, str],
    path,
    spec: ModelSpec | None = None,
    expected_format: str = FORMAT_NAME,
    check_model: bool = True,
) -> ModelSpec:
    """Every header field checked, the file named in one CheckpointError line; returns the spec to build.

    First each field's form and range (check_header, spec_from_header); then, with check_model, the
    spec against what the network can be (MODEL_IMAGE_SIZE, MODEL_NUM_CLASSES), so a digest-valid
    file that says `num_classes` 7 is refused here, not by a crash or a wrong figure later; then,
    where `spec` (the model being built) is given, each field the header states must equal it.
    The tensors' keys, shapes and dtypes are checked against the returned spec by the reader.
    """
    check_header(metadata, path, expected_format)
    stated = spec_from_header(metadata, path)
    if stated is not None and spec is not None:
        for field, value in stated.to_metadata().items():
            want = spec.to_metadata()[field]
            if value != want:
                raise _field_error(path, field, value, f"{want!r}, the model being built")
    chosen = spec or stated or DEFAULT_SPEC
    if check_model:
        if chosen.image_size != MODEL_IMAGE_SIZE:
            shown = ",".join(map(str, chosen.image_size))
            raise _field_error(path, "image_size", shown, "'28,28': the network reads 28x28 Fashion-MNIST images")
        if chosen.num_classes != MODEL_NUM_CLASSES:
            raise _field_error(
                path, "num_classes", str(chosen.num_classes), f"'{MODEL_NUM_CLASSES}': Fashion-MNIST has ten classes"
            )
    return chosen


def check_dtypes(tensors: dict[str, np.ndarray], path) -> None:
    """Every weight is float32, the one dtype both libraries load without a cast."""
    for key, value in tensors.items():
        if value.dtype != np.float32:
            raise CheckpointError(f"{path}: key {key!r} has dtype {value.dtype}, expected float32")


def read_state(
    path, spec: ModelSpec | None = None, allow_nonfinite: bool = False, check_model: bool = True
) -> tuple[dict[str, np.ndarray], ModelSpec]:
    """Read and validate a canonical checkpoint; returns (state, spec).

    With spec=None the spec comes from the file's header (the default spec if the header has
    none, as for a file saved from the tutorial's class with safetensors.torch.save_file).
    Every header field is validated (validate_header), against `spec` too where it is given.
    check_model=False reads a spec the twins' network cannot be (a tiny one, for tests). NaN or Inf
    weights raise CheckpointError naming the tensor unless allow_nonfinite=True (a diverged run).
    """
    tensors, metadata = _read(path, "checkpoint")
    spec = validate_header(metadata, path, spec, check_model=check_model)
    validate_state(tensors, spec, source=str(path))
    check_dtypes(tensors, path)
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
    """Read the sidecar written by write_train_state or write_checkpoint; returns (slots, counters)."""
    slots, _, counters, _ = _read_sidecar(path)
    return slots, counters


def _read_sidecar(path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None, dict, dict]:
    """(optimizer slots, the weights it holds or None for a sidecar from before they were kept, counters, header)."""
    side = train_state_path(path)
    tensors, metadata = _read(side, "training state")
    check_header(metadata, side, FORMAT_NAME + "/train-state")
    if "counters" not in metadata:
        raise CheckpointError(f"{side}: no training counters in header")
    try:
        counters = json.loads(metadata["counters"])
    except (ValueError, RecursionError):
        raise CheckpointError(f"{side}: header field 'counters' is not valid JSON") from None
    check_counters(counters, side)
    slots = {k: v for k, v in tensors.items() if not k.startswith(WEIGHTS_PREFIX)}
    weights = {k[len(WEIGHTS_PREFIX) :]: v for k, v in tensors.items() if k.startswith(WEIGHTS_PREFIX)}
    return slots, weights or None, counters, metadata


# ----------------------------------------------------------------------------- the crash-consistent pair
WEIGHTS_PREFIX = "weights/"  # the sidecar's copy of the weights: `weights/<canonical key>`


def new_run_id() -> str:
    """A random id naming one training run; every checkpoint pair the run writes carries it (resume keeps it)."""
    return secrets.token_hex(8)


def write_checkpoint(path, weights: dict[str, np.ndarray], spec: ModelSpec, slots: dict, counters: dict) -> Path:
    """Write one epoch's checkpoint pair so that a crash at any point leaves a resumable pair.

    The sidecar (weights + optimizer slots + counters, complete on its own) is renamed into place
    first, then the weights file. A crash before the sidecar's rename leaves the previous epoch's pair;
    a crash between the renames leaves the new sidecar and the previous weights, from which
    read_checkpoint resumes (the sidecar's weights win). counters must hold `run_id` and `optimizer_step`.
    """
    validate_state(weights, spec)
    weights = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
    run_id, step = str(counters["run_id"]), int(counters["optimizer_step"])
    metadata = {
        "format": FORMAT_NAME + "/train-state",
        "counters": json.dumps(counters, sort_keys=True),
        "run_id": run_id,
        **spec.to_metadata(),
    }
    tensors = {**{WEIGHTS_PREFIX + k: v for k, v in weights.items()}, **slots}
    atomic_write_bytes(train_state_path(path), _serialize(tensors, metadata))
    return write_state(path, weights, spec, {"step": str(step), "run_id": run_id})


def read_checkpoint(
    path, spec: ModelSpec | None = None, check_model: bool = True
) -> tuple[dict[str, np.ndarray], dict, dict]:
    """Read a pair written by write_checkpoint (or an older write_train_state pair); returns (weights, slots, counters).

    The weights come from the sidecar when it holds them; the weights file beside it must then be
    missing (a crash before its first rename), or of the same run and not newer. Files of two runs,
    or of two saves where the sidecar cannot tell, raise CheckpointError naming both files.
    """
    path = Path(path)
    side = train_state_path(path)
    slots, weights, counters, side_meta = _read_sidecar(path)
    if weights is None:  # an older sidecar: the weights file is the only copy and its step must match
        weights, spec = read_state(path, spec, check_model=check_model)
        check_pair(path, counters)
        return weights, slots, counters
    spec = validate_header(side_meta, side, spec, FORMAT_NAME + "/train-state", check_model)
    validate_state(weights, spec, source=f"{side} (its weights)")
    check_dtypes(weights, side)
    check_finite(weights, side)
    run_id, step = counters.get("run_id"), int(counters["optimizer_step"])
    if not os.path.lexists(path):
        return weights, slots, counters  # killed between the sidecar's first rename and the weights'
    file_weights, _ = read_state(path, spec, check_model=check_model)
    file_meta = _header_metadata(path)
    file_run, file_step = file_meta.get("run_id"), int(file_meta.get("step", -1))
    if file_run != run_id:
        raise CheckpointError(
            f"{path} (run {file_run or 'unknown'}) and {side} (run {run_id}) are files of two different runs; "
            "resume from a checkpoint and the sidecar written with it"
        )
    if file_step > step or (
        file_step == step and any(not np.array_equal(file_weights[k], weights[k]) for k in weights)
    ):
        raise CheckpointError(
            f"{path} (step {file_step}) and {side} (step {step}) do not belong together; "
            "resume from a checkpoint and the sidecar written with it"
        )
    return weights, slots, counters  # file_step < step: killed between the renames; the sidecar is the newer


def copy_checkpoint(source, dest) -> bool:
    """Make `dest` a complete pair of the run in `source` (the same file: finish an interrupted write); True if written.

    The sidecar is the newer half after a crash between the renames, so the weights are written from it.
    """
    from .paths import same_file

    source, dest = Path(source), Path(dest)
    weights, _, counters = read_checkpoint(source)
    _, _, _, side_meta = _read_sidecar(source)
    spec = spec_from_header(side_meta, train_state_path(source)) or DEFAULT_SPEC
    current = os.path.lexists(source) and _header_metadata(source).get("step") == str(counters["optimizer_step"])
    if same_file(source, dest) and current:
        return False
    if not same_file(train_state_path(source), train_state_path(dest)):
        atomic_write_bytes(train_state_path(dest), train_state_path(source).read_bytes())
    if current:  # the weights file is the sidecar's epoch (read_checkpoint compared them): copy it as it is
        atomic_write_bytes(dest, source.read_bytes())
        return True
    metadata = {"step": str(counters["optimizer_step"])}
    if counters.get("run_id"):
        metadata["run_id"] = counters["run_id"]
    write_state(dest, weights, spec, metadata)
    return True


def _header_metadata(path) -> dict[str, str]:
    """The header metadata of a safetensors file (already verified by a read), {} when it has none."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return dict(f.metadata() or {})
    except Exception:  # unreadable: the reader that follows names the problem
        return {}


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
            ok = value in BACKENDS
        if ok and field == "history":
            ok = all(isinstance(row, dict) for row in value) and len(value) == counters.get("epoch")
            expected = "a JSON list of one object per finished epoch"
        if not ok:
            shown = json.dumps(value)[:60]
            raise CheckpointError(f"{side}: counters field {field!r} is {shown}; expected {expected}")
    run_id = counters.get("run_id")  # absent in sidecars written before runs had ids
    if run_id is not None and not (isinstance(run_id, str) and re.fullmatch(r"[0-9a-f]{1,64}", run_id)):
        raise CheckpointError(f"{side}: counters field 'run_id' is {json.dumps(run_id)[:60]}; expected a hex string")


# Scheduler state fields that move with the run (torch's LRScheduler.state_dict); every other field is
# the schedule itself (T_max, eta_min, base_lrs, ...) and must equal the schedule this run builds.
_SCHEDULER_POSITION = ("last_epoch", "_step_count", "_last_lr", "_is_initial", "_get_lr_called_within_step")


def validate_training_state(
    side,
    counters: dict,
    epochs: int,
    steps_per_epoch: int | None = None,
    slots: dict[str, np.ndarray] | None = None,
    expected_slots: dict[str, tuple[tuple[int, ...], str, bool]] | None = None,
    scheduler: dict | None = None,
) -> None:
    """The one rule every twin's resume applies: a sidecar's counters and optimizer slots must fit this run.

    A digest proves the bytes unchanged since written, not that they belong to this run; an edited
    and re-digested sidecar must be refused here, in one CheckpointError line naming the file and field:
    - counters: `epoch` within 0..epochs, each `history` row numbered in order, `step` =
      epoch * steps_per_epoch (where known, else a whole number of epochs) and `optimizer_step` = step;
    - slots (where given): exactly the keys of `expected_slots` (key -> (shape, dtype, is_count), the
      twin's own optimizer state for this config), each of that shape and dtype, finite, and every
      count (optax's `count`, torch's `step`) equal to optimizer_step;
    - scheduler (with expected_slots): the counters' `scheduler` (torch's LRScheduler.state_dict) must have
      the keys and the schedule fields of `scheduler` (a fresh one of this run's), its position at
      optimizer_step; without a template (the JAX twins, whose schedule counts are slots) there must be none.
    """
    epoch, step, optimizer_step = counters["epoch"], counters["step"], counters["optimizer_step"]

    def refuse(field: str, value, expected: str):
        shown = json.dumps(value)[:60] if not isinstance(value, str) else value[:60]
        return CheckpointError(f"{side}: {field} is {shown}; expected {expected}")

    if not 0 <= epoch <= epochs:
        raise refuse("counters field 'epoch'", epoch, f"an epoch in 0..{epochs}, the run's --epochs")
    for i, row in enumerate(counters["history"]):
        if row.get("epoch") != i + 1:
            raise refuse(f"counters field 'history' row {i}'s 'epoch'", row.get("epoch"), f"{i + 1}")
    if steps_per_epoch is not None and step != epoch * steps_per_epoch:
        expected = f"{epoch * steps_per_epoch} (epoch {epoch} x {steps_per_epoch} steps per epoch of this run)"
        raise refuse("counters field 'step'", step, expected)
    if steps_per_epoch is None and (step % epoch if epoch else step):
        raise refuse("counters field 'step'", step, f"a multiple of epoch {epoch}")
    if optimizer_step != step:
        raise refuse("counters field 'optimizer_step'", optimizer_step, f"{step}, the counters' step")
    if expected_slots is None:  # no twin's layout to hold the slots and scheduler against: the counters only
        return
    if slots is not None:
        missing, extra = sorted(set(expected_slots) - set(slots)), sorted(set(slots) - set(expected_slots))
        if missing:
            raise CheckpointError(f"{side}: missing optimizer slot {missing[0]!r} (this run's optimizer has it)")
        if extra:
            raise CheckpointError(f"{side}: unexpected optimizer slot {extra[0]!r} (this run's optimizer has none)")
        for key, (shape, dtype, is_count) in expected_slots.items():
            value = slots[key]
            if tuple(value.shape) != tuple(shape) or value.dtype != np.dtype(dtype):
                raise CheckpointError(
                    f"{side}: optimizer slot {key!r} is {value.dtype} {tuple(value.shape)}; expected {dtype} "
                    f"{tuple(shape)}, as this run's optimizer holds it"
                )
            if not np.isfinite(value).all():
                raise CheckpointError(f"{side}: optimizer slot {key!r} holds non-finite values (NaN or Inf)")
            if is_count and not np.all(value == optimizer_step):
                raise refuse(f"optimizer slot {key!r}", value.reshape(-1).tolist()[:4], f"{optimizer_step}")
    saved = counters.get("scheduler")
    if scheduler is None:
        if saved is not None:
            raise refuse("counters field 'scheduler'", saved, "none: this twin's schedule lives in its slots")
        return
    if not isinstance(saved, dict) or set(saved) != set(scheduler):
        raise refuse("counters field 'scheduler'", saved, f"an object with the keys {sorted(scheduler)}")
    for key, value in scheduler.items():
        if key not in _SCHEDULER_POSITION and saved[key] != value:
            raise refuse(f"counters field 'scheduler' key {key!r}", saved[key], f"{json.dumps(value)}, this run's")
    if saved.get("last_epoch") != optimizer_step or saved.get("_step_count") != optimizer_step + 1:
        raise refuse("counters field 'scheduler' key 'last_epoch'", saved.get("last_epoch"), f"{optimizer_step}")
    rates, top = saved.get("_last_lr"), max(scheduler.get("base_lrs") or [0.0])
    if not (
        isinstance(rates, list)
        and len(rates) == len(scheduler.get("base_lrs") or [])
        and all(isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r <= top for r in rates)
    ):
        raise refuse("counters field 'scheduler' key '_last_lr'", rates, f"rates in 0..{top}, one per group")


def check_pair(path, counters: dict) -> None:
    """Refuse weights and a sidecar from different saves (a crash between the two renames)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        step = (f.metadata() or {}).get("step")
    if step is not None and int(step) != int(counters["optimizer_step"]):
        side, side_step = train_state_path(path), counters["optimizer_step"]
        raise CheckpointError(f"{path} (step {step}) and {side} (step {side_step}) do not belong together")


# ----------------------------------------------------------------------------- one writer per checkpoint


def lock_path(path) -> Path:
    """CKPT.safetensors -> CKPT.lock, the file a run holds an flock on while it writes CKPT and its sidecar."""
    return _beside(path, ".lock")


class RunLock:
    """An exclusive flock on `<name>.lock` beside a checkpoint, held while one run writes it.

    The OS releases it when the process dies, however it dies, so a crash never leaves a stale lock.
    The file holds the holder's pid, for the refusal's message; it is never deleted (deleting a lock
    file lets a third process lock a new inode while the second still holds the old one).
    """

    def __init__(self, path):
        self.path = lock_path(path)
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as e:
            raise _write_error(self.path, e) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip()
            os.close(self.fd)
            self.fd = None
            who = f"pid {holder}" if holder.isdigit() else "another process"
            raise CheckpointError(
                f"{path} is being written by another run ({who}, holding {self.path}); "
                "wait for it to finish or give another --out"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None

    __del__ = release

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def run_lock(path) -> RunLock | None:
    """Lock `path` for this run (RunLock); None when there is no path (a run that writes no checkpoint)."""
    return None if path is None else RunLock(path)


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
