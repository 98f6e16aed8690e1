"""Ctrl-C stops training at a step boundary, never from inside a compiled computation.

Python's default SIGINT handler raises KeyboardInterrupt wherever the main thread is, also inside
a call into XLA, which then died of SIGSEGV or SIGABRT in 5 of 9 tries. Installed (by the command
line), the handler here only sets a flag; the epoch loops call check() between slices of steps
(flax: between compiled scans; torch: between steps), which raises KeyboardInterrupt there, and
the command exits 130. A second Ctrl-C raises at once, for a loop that never reaches a check.
"""

from __future__ import annotations

import signal
import threading

_requested = False


def _on_sigint(signum, frame) -> None:
    global _requested
    if _requested:
        raise KeyboardInterrupt  # the second Ctrl-C: now
    _requested = True


def install() -> None:
    """Route SIGINT to the flag (only the main thread may set a handler; elsewhere nothing changes)."""
    global _requested
    _requested = False
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)


def uninstall() -> None:
    """Python's default handler back, and the flag cleared."""
    global _requested
    _requested = False
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed since install(): called at step boundaries."""
    if _requested:
        raise KeyboardInterrupt
