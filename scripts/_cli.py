"""Helpers the scripts share: import path, lazy backend import, output checks, one-line errors.

Each script does `import _cli` first. Python puts the script's own folder (scripts/) on
sys.path, which is how `_cli` is found; importing it then puts the repository root in front,
so `python scripts/train.py ...` works from a fresh clone without `pip install`.

Set FASHION_TWINS_TRACEBACK=1 to get the full traceback instead of the one-line error.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("torch", "flax")


def add_repo_to_path() -> None:
    """Put the repository root first on sys.path, so this checkout wins over any installed copy."""
    root = str(REPO_ROOT)
    if sys.path[:1] != [root]:
        sys.path.insert(0, root)


add_repo_to_path()

from fashion_common.errors import FashionTwinsError  # noqa: E402  (needs the path set above)
from fashion_common.loop import check_writable  # noqa: E402
from fashion_common.runtime import tune_allocator  # noqa: E402


# What a user can cause and fix: bad values, missing or unreadable files, unwritable outputs.
# OSError covers FileNotFoundError, PermissionError, IsADirectoryError and PIL's
# UnidentifiedImageError (an OSError subclass), so PIL need not be imported here.
EXPECTED_ERRORS = (FashionTwinsError, OSError, ValueError)


def error_line(e: BaseException) -> str:
    """The exception as one line: `error: <message>`."""
    if isinstance(e, OSError) and e.strerror and e.filename:
        message = f"{e.strerror}: {e.filename}"  # "No such file or directory: x", not "[Errno 2] ..."
    else:
        message = str(e) or type(e).__name__
    return "error: " + " ".join(message.split())  # one line, even if the message had several


def main_wrapper(fn, argv=None) -> None:
    """Run fn(argv) and exit with its return code; expected errors exit 2 with one line on stderr."""
    argv = sys.argv[1:] if argv is None else argv
    tune_allocator()  # steady step times: see fashion_common/runtime.py
    try:
        code = fn(argv)
    except EXPECTED_ERRORS as e:
        if os.environ.get("FASHION_TWINS_TRACEBACK"):
            raise
        print(error_line(e), file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        # Checkpoints are written atomically after each epoch, so the last one on disk is intact.
        print("error: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code or 0)


def backend_module(name: str):
    """Import one twin (fashion_torch or fashion_flax) with its train module; the other framework is never imported."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose {' or '.join(BACKENDS)}")
    twin = importlib.import_module(f"fashion_{name}")
    importlib.import_module(f"fashion_{name}.train")  # makes twin.train available
    return twin


def check_output_path(path, flag: str) -> None:
    """Fail before any data loading or training if `path` cannot be written."""
    check_writable(path, flag)


def add_backend_argument(parser) -> None:
    """--backend, the same on every script."""
    parser.add_argument("--backend", required=True, choices=BACKENDS, help="which twin runs: torch (PyTorch) or flax (Flax linen)")


def add_device_argument(parser) -> None:
    """--device for evaluate and predict (train builds its own from TrainConfig.device)."""
    from fashion_common.config import DEVICES, TrainConfig

    default = TrainConfig.device
    parser.add_argument("--device", choices=DEVICES, default=default, help=f"auto: a GPU if the framework sees one, else cpu (default: {default})")


def add_data_arguments(parser) -> None:
    """--data-dir and --download, the same on every script that reads Fashion-MNIST."""
    parser.add_argument(
        "--data-dir", metavar="DIR", default=None,
        help="folder with the four Fashion-MNIST .gz files (default: $FASHION_TWINS_DATA, then /usr/share/datasets/fashion-mnist, then the cache)",
    )
    parser.add_argument("--download", action="store_true", help="download with torchvision if no folder holds the data (default: off)")
