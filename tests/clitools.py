"""Helpers the CLI tests share: run `fashion-twins` in process, and check the one-line error path."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest

from fashion_twins.cli import main

HAVE_DATA = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file() or bool(
    os.environ.get("FASHION_TWINS_DATA")
)
DATA_REASON = (
    "needs the real Fashion-MNIST: apt-get install dataset-fashion-mnist, or set FASHION_TWINS_DATA to a folder "
    "with the four .gz files"
)


def needs_data(test):
    """Mark a test as needing the real Fashion-MNIST; where it is absent the test is skipped with the reason."""
    return pytest.mark.data(pytest.mark.skipif(not HAVE_DATA, reason=DATA_REASON)(test))


class Result:
    def __init__(self, code: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = code, stdout, stderr


def cli(*args) -> Result:
    """Run `fashion-twins ARGS` in this process; returns exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return Result(code, out.getvalue(), err.getvalue())


def assert_ok(result) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def assert_one_error_line(result, *fragments) -> None:
    """Exit 2, no traceback, and stderr is exactly one `error: ...` line containing each fragment."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
