"""The fast tier's guard (tests/spawn_guard.py) on a suite of its own: it fails what it should, and only that."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parent

SUITE = """
import subprocess, sys
import pytest

@pytest.fixture(scope="module")
def launched():
    subprocess.run([sys.executable, "-c", "pass"], check=True)

def test_in_process():
    assert 1 + 1 == 2

def test_starts_python():
    subprocess.run([sys.executable, "-c", "pass"], check=True)

def test_through_a_module_fixture(launched):
    pass

def test_probes_the_machine():
    subprocess.run(["uname", "-s"], check=True, capture_output=True)  # not a Python process: allowed

@pytest.mark.slow
def test_marked_slow_starts_python():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
"""


@pytest.mark.slow  # the inner suite runs in a pytest process of its own (the guard patches process creation)
def test_the_guard_fails_fast_tier_tests_that_start_python_and_passes_the_rest(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    monkeypatch.delenv("FASHION_TWINS_SPAWN_GUARD", raising=False)
    pytester.makepyfile(test_inner=SUITE)
    result = pytester.runpytest_subprocess("-p", "spawn_guard", "-p", "no:cacheprovider", "-W", "ignore")
    # five pass their call; the two that start Python in the fast tier then error at teardown, naming it
    result.assert_outcomes(passed=5, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_starts_python*",
            "*a fast-tier test started 1 Python process(es)*-c pass*mark it @pytest.mark.slow*",
            "*ERROR at teardown of test_through_a_module_fixture*",
        ]
    )
    assert "test_probes_the_machine" not in result.stdout.str().split("short test summary")[-1]
    assert "test_marked_slow_starts_python" not in result.stdout.str().split("short test summary")[-1]
