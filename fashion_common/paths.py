"""Output-path checks the command line runs before any work: no two paths alias, every output is writable.

Framework-free and cheap, so a bad path fails in milliseconds, before data loading, a framework
import or an epoch of training. Errors are `PathError` (an OSError-free FashionTwinsError) whose
message names the flag or flags involved.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .errors import FashionTwinsError


class PathError(FashionTwinsError, ValueError):
    """An output path that aliases another path, or that cannot be written."""


def _identity(path) -> tuple[str, tuple[int, int] | None]:
    """(realpath, (st_dev, st_ino) or None if the file does not exist yet)."""
    real = os.path.realpath(path)
    try:
        st = os.stat(path)
    except OSError:
        return real, None
    return real, (st.st_dev, st.st_ino)


def same_file(a, b) -> bool:
    """True if a and b name one file: the same real path (symlinks resolved) or the same inode (hard links)."""
    (real_a, ino_a), (real_b, ino_b) = _identity(a), _identity(b)
    return real_a == real_b or (ino_a is not None and ino_a == ino_b)


def check_no_aliases(
    outputs: dict[str, object], inputs: dict[str, object] | None = None, allowed: Iterable[tuple[str, str]] = ()
) -> None:
    """Refuse any output that is the same file as another output or as an input, naming both flags.

    Args:
      outputs: flag (e.g. "--out") -> path; None values are skipped.
      inputs: flag -> path of a file only read.
      allowed: (flag, flag) pairs that may name one file (train's --resume and --out).
    """
    inputs = inputs or {}
    ok = {frozenset(pair) for pair in allowed}
    named = [(flag, path, True) for flag, path in outputs.items() if path is not None]
    named += [(flag, path, False) for flag, path in inputs.items() if path is not None]
    for i, (flag_a, a, a_out) in enumerate(named):
        for flag_b, b, b_out in named[i + 1 :]:
            if not (a_out or b_out) or frozenset((flag_a, flag_b)) in ok:
                continue  # two inputs may be one file
            if same_file(a, b):
                raise PathError(f"{flag_a} {a} and {flag_b} {b} are the same file; give them different paths")


def _probe_folder(folder: Path, what: str) -> None:
    """Create and remove a temp file in folder: os.access says yes for /proc and some mounts where writes fail."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".fashion-twins-probe.", dir=folder)
    except OSError as e:
        raise PathError(f"{what}: cannot create files in {folder} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(tmp)


def check_output_file(path, flag: str) -> None:
    """Refuse before any work an output file that cannot be written atomically (temp file + rename in its folder)."""
    if path is None:
        return
    path = Path(path)
    what = f"{flag} {path}"
    if str(path) == "" or path.name in ("", ".", ".."):
        raise PathError(f"{what}: give a file path")
    try:
        kind = file_kind(os.stat(path).st_mode)
    except FileNotFoundError:
        kind = None
    except OSError as e:
        raise PathError(f"{what}: {e.strerror or e}") from None
    if kind == "directory":
        raise PathError(f"{what} is a folder; give a file path")
    if kind not in (None, "file"):
        # A rename over a FIFO or device node would replace it (as root, /dev/null itself).
        raise PathError(f"{what} exists and is not a regular file")
    folder = path.absolute().parent
    if not folder.exists():
        raise PathError(f"{what}: folder {folder} does not exist")
    if not folder.is_dir():
        raise PathError(f"{what}: {folder} is not a folder")
    check_name_length(path, folder, what)
    _probe_folder(folder, what)


# The atomic writer's temp file is `.NAME.PID.RANDOM.tmp` (fashion_common.checkpoint.atomic_write_bytes):
# the longest name written for an output, at most this many bytes longer than NAME (pid <= 7 digits).
TEMP_NAME_EXTRA = len(".") + len(".1234567.") + 8 + len(".tmp")


def check_name_length(path: Path, folder: Path, what: str) -> None:
    """Refuse a name whose temp file would be too long for the folder (else it fails after a whole epoch)."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    size = len(os.fsencode(path.name))
    if size + TEMP_NAME_EXTRA > limit:
        raise PathError(
            f"{what}: the file name is {size} bytes; the temp file written beside it adds {TEMP_NAME_EXTRA}, "
            f"over this folder's limit of {limit} bytes a name; give at most {limit - TEMP_NAME_EXTRA} bytes"
        )


def check_output_dir(path, flag: str) -> None:
    """Refuse before any work an output folder that exists as a file or cannot be created or written."""
    path = Path(path)
    what = f"{flag} {path}"
    if path.exists():
        if not path.is_dir():
            raise PathError(f"{what} is a file; give a folder")
        _probe_folder(path, what)
        return
    # It will be created (with parents): the nearest existing ancestor must be a writable folder.
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise PathError(f"{what}: {ancestor} is a file, not a folder")
    _probe_folder(ancestor, what)


def file_kind(mode: int) -> str:
    """What an os.stat mode is, in words: "file", "directory", "a FIFO", "a device file", "a socket" or "special"."""
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    return "a socket" if stat.S_ISSOCK(mode) else "special"


def check_input_file(path, flag: str) -> None:
    """Refuse a missing input, a folder, or a FIFO/device (which would hang or mislead), naming the flag."""
    path = Path(path)
    try:
        kind = file_kind(os.stat(path).st_mode)
    except FileNotFoundError:
        raise PathError(f"{flag} {path}: no such file") from None
    except OSError as e:
        raise PathError(f"{flag} {path}: {e.strerror or e}") from None
    if kind == "directory":
        raise PathError(f"{flag} {path} is a folder; give a file")
    if kind != "file":
        raise PathError(f"{flag} {path} is not a regular file ({kind})")
