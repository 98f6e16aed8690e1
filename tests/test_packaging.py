"""pyproject.toml names, with a lower bound, every third-party package the shipped code imports."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Every shipped package of the project (fashion_common, the twins, fashion_compare, fashion_twins): found, not listed,
# so a new twin is checked the day it lands.
PACKAGES = tuple(sorted(p.parent.name for p in REPO.glob("fashion_*/__init__.py")))
# import name -> distribution name, where they differ; jaxlib comes with jax.
DISTRIBUTION = {"PIL": "pillow", "jaxlib": "jax"}
# Imported only behind a flag that names its extra when it is missing (train --tensorboard).
EXTRAS = {"tensorboard": "tensorboard"}


def third_party_imports() -> set[str]:
    """Top-level names imported anywhere in the shipped packages, less the standard library and the project."""
    names = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in PACKAGES and n != "__future__"}


def test_every_third_party_import_is_a_dependency_with_a_lower_bound():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    bounded = {}
    for group in [project["dependencies"], *project["optional-dependencies"].values()]:
        for requirement in group:
            if requirement.startswith(project["name"] + "["):  # [all]: the other extras, by name
                continue
            name, bound = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)", requirement).groups()
            bounded[name.lower()] = bound
    imported = third_party_imports()
    assert {"torch", "jax", "flax", "optax", "numpy", "safetensors"} <= imported  # the scan sees the real imports
    for name in imported:
        distribution = DISTRIBUTION.get(name, name).lower()
        assert distribution in bounded, f"{name} is imported but pyproject lists no {distribution}>=..."
    assert set(EXTRAS) <= set(project["optional-dependencies"])
