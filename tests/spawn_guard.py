"""The fast tier stays in process: a guard that fails a fast-tier test which starts a Python process.

`python3 -m pytest -m "not slow"` is the README's test command: every cross-twin proof in one process,
in minutes. A test that starts a Python process (a CLI run, a worker, torchrun, a fork) belongs to the slow
tier (@pytest.mark.slow): this plugin fails the unmarked test that does, at its teardown, naming what it
started, so the fast tier cannot grow slow unnoticed. tests/conftest.py loads it; tests/test_spawn_guard.py
proves it on a small suite of its own. FASHION_TWINS_SPAWN_GUARD=0 turns it off (e.g. to time a variant).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_SPAWNED: list[str] = []  # what the running test (its set-up, module fixtures included, call and teardown) started
_GUARDED = [False]  # whether the running test is in the fast tier


def _guarded(item) -> bool:
    return item.get_closest_marker("slow") is None and os.environ.get("FASHION_TWINS_SPAWN_GUARD") != "0"


def _install_spawn_recorders() -> None:
    """Wrap the ways a test starts a process (subprocess, multiprocessing, os.fork) to note each in _SPAWNED."""
    import multiprocessing.process
    import subprocess

    popen_init, process_start, fork = subprocess.Popen.__init__, multiprocessing.process.BaseProcess.start, os.fork

    def recording_popen(self, args, *rest, **kwargs):
        argv = [str(a) for a in args] if isinstance(args, list | tuple) else str(args).split()
        if _GUARDED[0] and ("python" in Path(argv[0]).name or argv[0] == sys.executable):  # not `uname -p`
            _SPAWNED.append(" ".join(argv))
        return popen_init(self, args, *rest, **kwargs)

    def recording_start(self):
        if _GUARDED[0]:
            _SPAWNED.append(f"multiprocessing {self.name}")
        return process_start(self)

    def recording_fork():
        if _GUARDED[0]:
            _SPAWNED.append("os.fork()")
        return fork()

    subprocess.Popen.__init__ = recording_popen
    multiprocessing.process.BaseProcess.start = recording_start
    os.fork = recording_fork


_install_spawn_recorders()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _SPAWNED.clear()
    _GUARDED[0] = _guarded(item)
    yield
    _GUARDED[0] = False


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A fast-tier test that started a Python process fails at its teardown, naming the first one."""
    outcome = yield
    report = outcome.get_result()
    if call.when == "teardown" and _SPAWNED and _guarded(item):
        report.outcome = "failed"
        report.longrepr = (
            f"a fast-tier test started {len(_SPAWNED)} Python process(es), in its set-up (a module fixture "
            f"counts), call or teardown (first: {_SPAWNED[0][:200]}); mark it @pytest.mark.slow"
        )
