"""Whether to draw progress bars: only where a person watches them (a terminal, or a notebook's widget).

In a log file or a pipe a tqdm bar is a stream of carriage-return frames (4 KB for one short
epoch); there the per-epoch lines are the log, one line per epoch.
"""

from __future__ import annotations

import sys


def progress_bars_wanted(stream=None) -> bool:
    """True when `stream` (default: stderr, where tqdm draws) is a terminal, or this process is a Jupyter kernel."""
    stream = sys.stderr if stream is None else stream
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # a stream without isatty, or a closed one
        pass
    return _in_notebook()


def _in_notebook() -> bool:
    """A Jupyter kernel: stderr is no terminal there, but tqdm.auto draws a widget, not frames."""
    ipython = sys.modules.get("IPython")  # only looked up, never imported: a plain script has none
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})
