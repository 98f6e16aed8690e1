"""What every subcommand shares: the parser class with one error path, parent parsers, value checks.

Parent parsers give every subcommand the same names and choices for --backend, --device,
--precision, the data options and the checkpoint options. Value checks run as argparse `type=`
functions, so a bad value fails at parse time, before data loading or a framework import, with
the flag named: `error: argument --seed: must be an integer in 0..4294967295, got '-1'`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import math
import os
import subprocess
import sys
from collections.abc import Callable

from fashion_common.config import DEVICES
from fashion_common.spec import BACKENDS

PRECISIONS = ("highest", "tf32", "both")  # highest: TF32 off in torch, JAX "highest" (the parity mode)
OUTPUT_ACTIVATIONS = ("none", "relu")
SEED_MAX = 2**32 - 1


class UsageError(Exception):
    """A bad command line; printed as one `error:` line, exit 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error raises UsageError (one line from main) instead of printing usage and exiting.

    Prefixes of a flag are not taken for it (allow_abbrev=False): argparse would read `--epoch 2` as --epochs, and
    a prefix that is unique today stops being so when a flag is added. A typo gets the nearest flag instead.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")

    def parse_args(self, args=None, namespace=None):
        """As argparse, but an unknown flag's error names the nearest known flag and the subcommand's help."""
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            # argparse collects a subcommand's unknown words and reports them from the top-level parser;
            # the subcommand's own prog and flags (set by build_parser) are what it accepts.
            prog = getattr(parsed, "command_prog", self.prog)
            flags = getattr(parsed, "command_flags", tuple(self._option_string_actions))
            hint = nearest_flag(unknown, flags)
            raise UsageError(f"unrecognized arguments: {' '.join(unknown)}{hint} (see {prog} --help)")
        return parsed


def nearest_flag(unknown: list[str], flags) -> str:
    """'; did you mean --batch-size?' for the first unknown flag near a known one (as pip and git suggest), or ''."""
    import difflib

    for word in unknown:
        if not word.startswith("--"):
            continue
        given = word.split("=", 1)[0]
        # 0.75: --batchsize, --epoch, --lr-rate find their flag; a flag of another command (--steps in train) does not.
        match = difflib.get_close_matches(given, [f for f in flags if f.startswith("--")], n=1, cutoff=0.75)
        if match:
            return f"; did you mean {match[0]}?"
    return ""


# ----------------------------------------------------------------------------- value checks (argparse type=)


# Every numeric flag is bounded by what its consumers take, the same in every twin. Counts, sizes and
# indices are int32 in JAX (its default integer; optax's step counts) and in jax.distributed's C++
# arguments, so no integer flag goes past INT_MAX (the seed, a uint32, has its own range). Floats become
# float32 in every twin's arithmetic: beyond FLOAT32_MAX they are inf, and a positive one under
# FLOAT32_TINY (the smallest normal) is a subnormal that XLA on CPU flushes to 0 and torch does not.
INT_MAX = 2**31 - 1
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38


def int_in(low: int, high: int | None = INT_MAX, what: str = "an integer") -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (high: INT_MAX unless given)."""
    high = INT_MAX if high is None else high

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            value = None
        if value is None or value < low or value > high:
            span = f">= {low}" if high == INT_MAX and (value is None or value < low) else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be {what} {span}, got {text!r}")
        return value

    parse.__name__ = "int"
    return parse


def integer(text: str) -> int:
    """An argparse type: an integer written in base 10, within +-INT_MAX (the config's checks set the range)."""
    try:
        value = int(text, 10)
    except ValueError:
        value = None
    if value is None or abs(value) > INT_MAX:
        raise argparse.ArgumentTypeError(f"must be an integer in -{INT_MAX}..{INT_MAX}, got {text!r}")
    return value


positive_int = int_in(1)
seed_int = int_in(0, SEED_MAX)


def _finite(text: str) -> float:
    """float(text), or ArgumentTypeError for text that is not a finite number (nan and inf included)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """An argparse type: a finite float32-sized number (nan, inf and |x| > FLOAT32_MAX refused at parse time)."""
    value = _finite(text)
    if abs(value) > FLOAT32_MAX:
        raise argparse.ArgumentTypeError(f"must be a number within +-{FLOAT32_MAX:.7g} (float32), got {text!r}")
    if 0 < abs(value) < FLOAT32_TINY:
        raise argparse.ArgumentTypeError(
            f"must be 0 or at least {FLOAT32_TINY:.7g} in size (float32's smallest normal), got {text!r}"
        )
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number > 0, float32-sized (finite_float)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def timeout_seconds(text: str) -> float:
    """An argparse type: --timeout, seconds in what every launcher takes (fashion_common.distributed.check_timeout)."""
    from fashion_common.distributed import DistributedError, check_timeout

    value = _finite(text)
    try:
        return check_timeout(value)
    except DistributedError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("argument --timeout: ")) from None


# ----------------------------------------------------------------------------- parent parsers


def backend_parent() -> argparse.ArgumentParser:
    p = Parser(add_help=False)
    p.add_argument(
        "--backend",
        required=True,
        choices=BACKENDS,
        help="which twin runs: torch (PyTorch), flax (Flax linen) or nnx (Flax NNX) (required, no default)",
    )
    return p


def device_parent(default: str = "auto") -> argparse.ArgumentParser:
    p = Parser(add_help=False)
    p.add_argument(
        "--device",
        choices=DEVICES,
        default=default,
        help=f"where to run: cpu, gpu, or auto (a GPU if the framework(s) see one, else the cpu) (default: {default})",
    )
    return p


def precision_parent(
    default: str | None = "highest", default_text: str | None = None, choices: tuple[str, ...] = PRECISIONS
) -> argparse.ArgumentParser:
    """--precision, the same flag for every command that computes; `both` only where a command runs each in turn."""
    p = Parser(add_help=False)
    modes = "highest (TF32 off in torch, JAX 'highest')" + (
        ", tf32, or both in turn" if "both" in choices else " or tf32"
    )
    p.add_argument(
        "--precision",
        choices=choices,
        default=default,
        help=f"float32 matmuls in every twin: {modes}; TF32 exists on GPUs only (default: {default_text or default})",
    )
    return p


# train, evaluate, predict and compare run one mode; lockstep and benchmark can also run both in turn.
ONE_PRECISION = ("highest", "tf32")


def threads_value(text: str) -> str | int:
    """An argparse type: 'auto' or an integer >= 1 (--threads)."""
    from fashion_common.runtime import parse_threads

    try:
        return parse_threads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def threads_parent() -> argparse.ArgumentParser:
    """--threads, for every subcommand that trains or times; the CLI applies it before any framework import."""
    p = Parser(add_help=False)
    p.add_argument(
        "--threads",
        type=threads_value,
        metavar="N|auto",
        default="auto",
        help="CPU threads for torch: auto = every usable core, with OpenMP workers that sleep instead of spinning "
        "while they wait (what keeps torch fast on a busy machine); recorded in the outputs (default: auto)",
    )
    return p


def apply_threads(args) -> None:
    """Apply --threads (where the subcommand has it) before torch or JAX is imported.

    Silent: the choice is recorded in every output (METRICS.json, report, benchmark JSON), and stderr
    keeps its one-line-error contract for whatever fails after parsing.
    """
    if getattr(args, "threads", None) is None:
        return
    from fashion_common.runtime import apply_threads as apply

    apply(args.threads)


def data_parent() -> argparse.ArgumentParser:
    p = Parser(add_help=False)
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        default=None,
        help=(
            "folder with the four Fashion-MNIST .gz files (default: $FASHION_TWINS_DATA, then "
            "/usr/share/datasets/fashion-mnist, then the cache)"
        ),
    )
    p.add_argument(
        "--download", action="store_true", help="download with torchvision if no folder holds the data (default: off)"
    )
    return p


def checkpoint_parent() -> argparse.ArgumentParser:
    """CKPT and --output-activation, for every subcommand that loads a checkpoint."""
    p = Parser(add_help=False)
    p.add_argument(
        "checkpoint",
        metavar="CKPT",
        help="a .safetensors checkpoint written by any twin (or the tutorial's torch.save'd .pth, torch only)",
    )
    p.add_argument(
        "--output-activation",
        choices=OUTPUT_ACTIVATIONS,
        default=None,
        help="the spec to assume for a file whose header has none (a user's own save_file): relu is the "
        "'Define the Class' cell's final ReLU "
        "(default: the header's spec; none if the header has no spec)",
    )
    return p


def add_quiet(p: argparse.ArgumentParser, what: str) -> None:
    """-q/--quiet, for a subcommand that prints progress; `what` says what it silences and what stays."""
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help=f"{what} (default: off; bars are drawn only when stderr is a terminal)",
    )


def precisions(choice: str) -> list:
    """highest|tf32|both -> the modes to run, in order."""
    return ["highest", "tf32"] if choice == "both" else [choice]


# ----------------------------------------------------------------------------- helpers


def backend_module(name: str, start_backend: bool = True):
    """Import one twin (fashion_torch, fashion_flax or fashion_nnx) and its train module; no other framework.

    start_backend=False leaves JAX's backends unstarted, for a data-parallel launch that must configure them first.
    """
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    twin = importlib.import_module(f"fashion_{name}")
    importlib.import_module(f"fashion_{name}.train")  # makes twin.train available
    if name in ("flax", "nnx") and start_backend:  # the JAX twins
        check_jax_platforms()
    return twin


def check_jax_platforms() -> None:
    """Start JAX's backends now, so that a JAX_PLATFORMS naming a missing platform is one line, not a traceback.

    JAX starts every platform the variable lists on first use, even for --device cpu; it fails with a
    RuntimeError (gpu, tpu) or a bare AssertionError (cuda).
    """
    import jax  # only for the flax twin, already imported by it

    with jax_platforms_named():
        jax.devices()


@contextlib.contextmanager
def jax_platforms_named():
    """Inside: a JAX backend that fails to start because of JAX_PLATFORMS becomes one DeviceError line.

    For the places that must start the backends themselves (a data-parallel run calls
    jax.distributed.initialize first), and for check_jax_platforms.
    """
    value = os.environ.get("JAX_PLATFORMS")
    try:
        yield
    except (RuntimeError, AssertionError) as e:
        if value is None or (str(e) and "backend" not in str(e).lower()):  # not a platform failing to start
            raise
        reason = str(e).split(" (set JAX_PLATFORMS")[0].splitlines()[0] if str(e) else type(e).__name__
        from fashion_common.errors import DeviceError

        raise DeviceError(
            f"JAX_PLATFORMS={value!r} names a platform JAX cannot start on this machine ({reason}); "
            "unset JAX_PLATFORMS, or set JAX_PLATFORMS=cpu"
        ) from None


# Each framework module -> the extra (pyproject's [project.optional-dependencies]) that installs it.
FRAMEWORK_EXTRAS = {
    "torch": "torch",
    "torchvision": "torch",
    "jax": "jax",
    "jaxlib": "jax",
    "flax": "jax",
    "optax": "jax",
}
# The commands that run a torch twin and a JAX twin side by side: they need both extras, i.e. [all], and start JAX.
EVERY_TWIN_COMMANDS = ("compare", "lockstep", "benchmark")


def command_name(args) -> str:
    """The subcommand's name ("train") from its prog ("fashion-twins train"); "" before parsing set it."""
    return getattr(args, "command_prog", "").rpartition(" ")[2]


def missing_framework_line(e: ModuleNotFoundError, args) -> str | None:
    """`error: ...` naming the extra to install, for a framework the command needs and cannot import; else None.

    The check is the import itself (its ModuleNotFoundError names the module), so a twin package that starts
    needing another module is covered with no list to keep; anything else missing is not ours to explain.
    """
    module = (e.name or "").split(".")[0]
    extra = FRAMEWORK_EXTRAS.get(module)
    if extra is None:
        return None
    command = getattr(args, "command_prog", "fashion-twins")
    if command_name(args) in EVERY_TWIN_COMMANDS:
        extra, what = "all", f"{command} runs a torch twin and a JAX twin; it"
    elif module == "torchvision":
        what = f"{command} --download (torchvision's downloader)"
    elif command_name(args) == "convert":
        what = f"{command} (a .pth file is torch's format)"
    elif getattr(args, "backend", None):
        what = f"{command} --backend {args.backend}"
    else:
        what = command
    return f"error: {what} needs {module}, which is not installed: pip install 'fashion-twins[{extra}]'"


def require_every_twin() -> None:
    """Import both frameworks now, before any data or output: a missing one is one line naming [all] (see main)."""
    for module in ("torch", "jax", "flax", "optax"):
        importlib.import_module(module)


def starts_jax(args) -> bool:
    """True if this command line will start JAX: a JAX twin's command, or one that runs every twin.

    torch's commands never start it, so XLA_FLAGS is none of theirs.
    """
    return command_name(args) in EVERY_TWIN_COMMANDS or getattr(args, "backend", None) in ("flax", "nnx")


def check_xla_flags() -> None:
    """A junk XLA_FLAGS as one line naming the variable, not XLA's fatal log line and exit 1.

    XLA parses the variable when the first backend starts and aborts the process on a flag it does not
    know (LOG(FATAL): nothing in Python can catch it), and the list of flags it knows is nowhere public.
    So where XLA_FLAGS is set, a child process starts JAX with it first (about 1.5 s of CPU); its abort
    is the verdict. A child that fails for another reason (a JAX_PLATFORMS the machine lacks) is left
    to check_jax_platforms, which names that variable.
    """
    value = os.environ.get("XLA_FLAGS")
    if value is None or not value.strip():
        return
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # the probe holds no GPU memory
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import jax; jax.devices()"], env=env, capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired):
        return  # the probe could not tell; the run itself will
    said = [line for line in probe.stderr.splitlines() if "XLA_FLAGS" in line]
    if probe.returncode == 0 or not said:
        return
    reason = said[-1].split("] ", 1)[-1].strip().rstrip(".")  # "Unknown flag in XLA_FLAGS: --no_such_flag"
    raise UsageError(f"XLA_FLAGS={value!r}: XLA refuses it ({reason}); fix the flag or unset XLA_FLAGS")


def note(line: str) -> None:
    """An informational line on stderr (stdout keeps the results only)."""
    print(line, file=sys.stderr, flush=True)


def checkpoint_spec(path, output_activation: str | None):
    """(spec to load `path` with, or None for the header's; a note to print once it has loaded, or None).

    A file whose header holds a spec is loaded with it; --output-activation then must agree.
    A file without one (a user's own safetensors save_file, or the tutorial's .pth) cannot say
    whether the stack ends with the 'Define the Class' cell's ReLU: the flag decides, default none.
    The note is printed only after a successful load, so a bad file still gives one error line.
    """
    from pathlib import Path

    from fashion_common.checkpoint import header_has_spec, read_metadata, spec_from_header
    from fashion_common.spec import DEFAULT_SPEC

    if header_has_spec(path):
        if output_activation is not None:
            stored = spec_from_header(read_metadata(path), path).output_activation or "none"  # validated
            if stored != output_activation:
                raise UsageError(
                    f"argument --output-activation: {output_activation} contradicts {path}'s header, which says "
                    f"{stored}"
                )
        return None, None
    chosen = output_activation or "none"
    spec = dataclasses.replace(DEFAULT_SPEC, output_activation=None if chosen == "none" else chosen)
    other = "relu" if chosen == "none" else "none"
    message = (
        f"note: {path} has no model spec in its header; assumed output activation {chosen} (--output-activation "
        f"{other} for the other)"
    )
    return spec, (message if Path(path).is_file() else None)
