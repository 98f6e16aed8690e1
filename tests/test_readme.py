"""Every ```python block of README.md runs verbatim, in order, in one fresh interpreter (the doctest habit).

The blocks are joined into one script and run by a new `python` in an empty folder, so a name used
before it is defined, a missing import or a file the README never wrote fails here as it would for
a reader. Blocks are separated by a marker line, so a failure names the block it came from.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from clitools import needs_data

REPO = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def readme_blocks() -> list[str]:
    return BLOCK.findall((REPO / "README.md").read_text())


def test_readme_has_the_python_blocks_this_test_runs():
    blocks = readme_blocks()
    assert len(blocks) == 4  # coming from the tutorial (2), using either twin, one checkpoint format
    assert 'torch.save(model.state_dict(), "model.pth")' in blocks[0]


@needs_data
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_every_python_block_of_the_readme_runs_verbatim_in_order_in_a_fresh_interpreter(tmp_path):
    blocks = readme_blocks()
    script = "".join(f"print('--- README block {i}', flush=True)\n{block}\n" for i, block in enumerate(blocks, 1))
    (tmp_path / "readme_blocks.py").write_text(script)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", FASHION_TWINS_CACHE=str(tmp_path / "cache"))
    result = subprocess.run(
        [sys.executable, "readme_blocks.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    last = ([line for line in result.stdout.splitlines() if line.startswith("--- README block")] or ["none"])[-1]
    assert result.returncode == 0, f"failed in {last}:\n{result.stderr[-3000:]}"
    assert f"--- README block {len(blocks)}" in result.stdout
    assert "669,706" in result.stdout  # the flax summary's parameter count was printed
    for name in ("model.pth", "model.safetensors", "from_flax.safetensors", "m.safetensors"):
        assert (tmp_path / name).is_file(), name  # every file the README says it writes, in the reader's folder
