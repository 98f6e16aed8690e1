"""The `fashion-twins` command: one parser, seven subcommands, one error path.

    fashion-twins train|evaluate|predict|compare|benchmark|lockstep|convert ...
    fashion-twins --version
    python -m fashion_twins ...            # the same, where the console script is not on PATH yet

Anything a user can cause and fix (a bad flag, a missing or unreadable file, an unwritable
output, a framework not installed: the line names the extra) prints one line, `error: ...`, on
stderr and exits 2; usage errors too. Set FASHION_TWINS_TRACEBACK=1 for the full traceback instead.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

from fashion_twins import __version__

from . import benchmark, common, compare, convert, evaluate, lockstep, predict, train

SUBCOMMANDS = (train, evaluate, predict, compare, benchmark, lockstep, convert)


def build_parser() -> common.Parser:
    parser = common.Parser(
        prog="fashion-twins",
        description="The PyTorch tutorial's Fashion-MNIST MLP, twinned three times: PyTorch, Flax linen and Flax NNX.",
    )
    parser.add_argument(
        "--version",
        action=VersionAction,
        help="print the version of fashion-twins and of the libraries it runs on, then exit",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True, parser_class=common.Parser)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    for subparser in sub.choices.values():
        # "fashion-twins train" and its flags: named by an unknown flag's error, which the top-level parser raises
        subparser.set_defaults(command_prog=subparser.prog, command_flags=tuple(subparser._option_string_actions))
    return parser


class VersionAction(argparse.Action):
    """--version: one unwrapped line on stdout, exit 0 (argparse's own action rewraps the text to the terminal)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        raise SystemExit(0)


def version_text() -> str:
    """`fashion-twins 0.1.0 (torch 2.14.1, jax 0.10.2, flax 0.12.8, optax 0.2.8; Python 3.11.7)`, importing none.

    The libraries' versions come from their installed metadata, so --version stays instant and names what a bug
    report needs; a library that is not installed is said to be so.
    """
    from importlib import metadata

    def installed(name: str) -> str:
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            return f"{name} not installed"

    libraries = ", ".join(installed(name) for name in ("torch", "jax", "flax", "optax"))
    return f"fashion-twins {__version__} ({libraries}; Python {platform.python_version()})"


def error_line(e: BaseException) -> str:
    """The exception as one line: `error: <message>`."""
    if isinstance(e, OSError) and e.strerror and e.filename:
        message = f"{e.strerror}: {e.filename}"  # "No such file or directory: x", not "[Errno 2] ..."
    else:
        message = str(e) or type(e).__name__
    return "error: " + " ".join(message.split())  # one line, even if the message had several


def main(argv: list[str] | None = None) -> int:
    """Parse and run one subcommand; returns the exit code (0, 2 for any expected error, 130 on Ctrl-C)."""
    from fashion_common.errors import FashionTwinsError
    from fashion_common.runtime import tune_allocator

    # What a user can cause and fix: bad values, missing or unreadable files, unwritable outputs.
    # OSError covers PIL's UnidentifiedImageError, so PIL need not be imported here.
    expected = (common.UsageError, FashionTwinsError, OSError, ValueError)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = None
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv
        tune_allocator()  # steady step times: see fashion_common/runtime.py
        common.apply_threads(args)  # --threads, before any framework is imported
        if common.starts_jax(args):
            common.check_xla_flags()  # before JAX starts in this process: XLA aborts on a flag it does not know
        return int(args.run(args) or 0)
    except SystemExit as e:  # --help and --version
        return e.code if isinstance(e.code, int) else 0
    except ModuleNotFoundError as e:  # a framework the command needs, not installed: name its extra
        line = common.missing_framework_line(e, args)
        if line is None or os.environ.get("FASHION_TWINS_TRACEBACK"):
            raise
        print(line, file=sys.stderr)
        return 2
    except expected as e:
        if os.environ.get("FASHION_TWINS_TRACEBACK"):
            raise
        print(error_line(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Checkpoints are written atomically after each epoch, so the last one on disk is intact.
        print("error: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The console script."""
    sys.exit(main())
