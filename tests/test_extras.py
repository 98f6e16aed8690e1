"""The frameworks are extras: `fashion-twins[torch]`, `[jax]` and `[all]`; a command whose framework is missing names
the extra to install in one line (exit 2).

In process, a framework is made missing by putting None in sys.modules under its name (what `import torch` then
raises is the ModuleNotFoundError of an absent package, naming it) and dropping the twin packages, so that they
import it again; the fixture puts every module back. The subprocess tests block a framework with a meta-path finder
and run a whole command; scripts/ci_installs.sh does it for real, in venvs holding one framework each.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from clitools import assert_ok, assert_one_error_line, cli, needs_data

from fashion_common import checkpoint as canonical
from fashion_common.spec import checkpoint_shapes

REPO = Path(__file__).resolve().parent.parent
FRAMEWORKS = {"torch": ("torch", "torchvision"), "jax": ("jax", "jaxlib", "flax", "optax")}
# The project's packages that import a framework: dropped, so that the command imports them (and it) again.
TWIN_PACKAGES = ("fashion_torch", "fashion_flax", "fashion_nnx", "fashion_compare")


@pytest.fixture
def missing():
    """missing("torch") or missing("jax"): that framework cannot be imported until the test ends."""
    saved = dict(sys.modules)

    def block(side: str) -> None:
        for name in list(sys.modules):
            if name.split(".")[0] in TWIN_PACKAGES:
                del sys.modules[name]
        for name in FRAMEWORKS[side]:
            sys.modules[name] = None  # `import name` raises ModuleNotFoundError(name=name)

    yield block
    sys.modules.clear()
    sys.modules.update(saved)


@pytest.fixture
def canonical_file(tmp_path):
    """A canonical checkpoint written without either framework (zeros: only the file's format matters here)."""
    import numpy as np

    state = {key: np.zeros(shape, np.float32) for key, shape in checkpoint_shapes().items()}
    return canonical.write_state(tmp_path / "m.safetensors", state)


# ----------------------------------------------------------------------------- one line naming the extra


@pytest.mark.parametrize(
    "side, argv, fragments",
    [
        ("torch", ["train", "--backend", "torch", "--dry-run"], ["train --backend torch needs torch", "[torch]"]),
        ("jax", ["train", "--backend", "flax", "--dry-run"], ["train --backend flax needs jax", "[jax]"]),
        ("jax", ["train", "--backend", "nnx", "--dry-run"], ["train --backend nnx needs jax", "[jax]"]),
        ("torch", ["evaluate", "--backend", "torch", "CKPT"], ["evaluate --backend torch needs torch", "[torch]"]),
        ("jax", ["predict", "--backend", "nnx", "CKPT", "--test-index", "0"], ["predict --backend nnx", "[jax]"]),
        ("torch", ["compare", "--dry-run"], ["compare runs a torch twin and a JAX twin", "needs torch", "[all]"]),
        ("jax", ["compare", "--dry-run"], ["compare runs a torch twin and a JAX twin", "needs jax", "[all]"]),
        ("jax", ["lockstep", "--steps", "1"], ["lockstep runs", "needs jax", "[all]"]),
        ("torch", ["benchmark", "--repeats", "1"], ["benchmark runs", "needs torch", "[all]"]),
    ],
)
def test_a_command_whose_framework_is_missing_says_which_extra_to_install(
    missing, canonical_file, tmp_path, side, argv, fragments
):
    argv = [str(canonical_file) if a == "CKPT" else a for a in argv]
    if argv[0] == "train":
        argv += ["--out", str(tmp_path / "out.safetensors")]
    if argv[0] in ("compare", "lockstep", "benchmark"):
        argv += ["--out-dir" if argv[0] == "compare" else "--out", str(tmp_path / "out")]
    missing(side)
    result = cli(*argv)
    assert_one_error_line(result, *fragments, "which is not installed: pip install 'fashion-twins[")
    assert not (tmp_path / "out.safetensors").exists() and not (tmp_path / "out").exists()  # nothing written


def test_convert_needs_torch_only_for_a_pth_side(missing, canonical_file, tmp_path):
    missing("torch")
    assert_ok(cli("convert", canonical_file, tmp_path / "copy.safetensors"))  # safetensors to safetensors: numpy only
    assert canonical.read_state(tmp_path / "copy.safetensors")[0].keys() == checkpoint_shapes().keys()
    result = cli("convert", canonical_file, tmp_path / "m.pth")
    assert_one_error_line(result, "convert (a .pth file is torch's format) needs torch", "'fashion-twins[torch]'")
    assert not (tmp_path / "m.pth").exists()


def test_a_missing_module_that_is_no_framework_is_not_explained_as_an_extra():
    from fashion_twins.cli import common

    assert common.missing_framework_line(ModuleNotFoundError("No module named 'yaml'", name="yaml"), None) is None
    line = common.missing_framework_line(ModuleNotFoundError("x", name="optax._src"), None)
    assert line == "error: fashion-twins needs optax, which is not installed: pip install 'fashion-twins[jax]'"


# ----------------------------------------------------------------------------- pyproject and setup.sh


def test_the_base_install_holds_no_framework_and_the_extras_hold_them_all():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def names(group):
        return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in group}

    extras = project["optional-dependencies"]
    assert not names(project["dependencies"]) & {"torch", "torchvision", "jax", "jaxlib", "flax", "optax"}
    assert names(extras["torch"]) == {"torch", "torchvision"}
    assert names(extras["jax"]) == {"jax", "flax", "optax"}
    assert extras["all"] == ["fashion-twins[torch,jax]"]
    # Every extra the error lines name exists.
    from fashion_twins.cli.common import FRAMEWORK_EXTRAS

    assert set(FRAMEWORK_EXTRAS.values()) | {"all"} <= set(extras)


def test_setup_sh_installs_both_frameworks_so_the_suite_runs_complete():
    script = (REPO / "scripts" / "setup.sh").read_text()
    assert "-e '.[all,test,tensorboard]'" in script


# ----------------------------------------------------------------------------- whole commands, in a subprocess

BLOCKER = """
import sys
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Missing())
from fashion_twins.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_without(side: str, *argv) -> subprocess.CompletedProcess:
    code = f"BLOCKED = {FRAMEWORKS[side]!r}\n" + BLOCKER
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, argv)], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_the_parser_and_help_of_every_command_import_no_framework():
    code = (
        "import sys\nfrom fashion_twins.cli import build_parser, main\n"
        "for command in ('', 'train', 'evaluate', 'predict', 'compare', 'benchmark', 'lockstep', 'convert'):\n"
        "    main([command, '--help'] if command else ['--help'])\n"
        "print(sorted(m for m in ('torch', 'jax', 'flax', 'optax') if m in sys.modules))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("side, backend", [("torch", "flax"), ("torch", "nnx"), ("jax", "torch")])
def test_a_twin_trains_and_evaluates_with_the_other_framework_missing(tmp_path, side, backend):
    out = tmp_path / "m.safetensors"
    small = ["--limit-train", 512, "--limit-test", 128, "--quiet"]
    trained = run_without(side, "train", "--backend", backend, "--dry-run", *small, "--out", out)
    assert trained.returncode == 0, trained.stderr
    evaluated = run_without(side, "evaluate", "--backend", backend, out, "--limit-test", 128)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "test_acc" in evaluated.stdout
    other = "torch" if backend != "torch" else "flax"
    refused = run_without(side, "evaluate", "--backend", other, out)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"error: fashion-twins evaluate --backend {other} needs {FRAMEWORKS[side][0]}, which is not installed: "
        f"pip install 'fashion-twins[{side}]'"
    )
