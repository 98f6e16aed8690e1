"""The basics of a command line (issue 17, part 2): --version, -q, errors that name the subcommand's help,
progress bars only on a terminal, machine-readable `evaluate --json`, help text a reader can follow."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
from clitools import assert_ok, assert_one_error_line, cli, needs_data

import fashion_twins
from fashion_common import config as config_module
from fashion_common.config import TrainConfig
from fashion_common.errors import ConfigError
from fashion_common.spec import CLASS_NAMES
from fashion_common.terminal import progress_bars_wanted
from fashion_twins.cli import build_parser
from fashion_twins.cli import evaluate as evaluate_cli
from fashion_twins.cli.common import UsageError
from fashion_twins.cli.train import TORCH_ENGINES

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """`python -m fashion_twins train` (torch, 2 short epochs) with stdout and stderr into one log file, as in a job."""
    folder = tmp_path_factory.mktemp("logged")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", FASHION_TWINS_CACHE=str(folder / "cache"))
    ckpt, metrics, log = folder / "m.safetensors", folder / "METRICS.json", folder / "train.log"
    argv = ["train", "--backend", "torch", "--epochs", "2", "--limit-train", "1024", "--limit-test", "512"]
    with open(log, "w") as handle:
        subprocess.run(
            [sys.executable, "-m", "fashion_twins", *argv, "--out", str(ckpt), "--metrics", str(metrics)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=folder,
            timeout=300,
            check=True,
        )
    return {"checkpoint": ckpt, "metrics": metrics, "log": log.read_text()}


def load_test_labels() -> np.ndarray:
    """The real test labels (10,000,), read straight from the .gz file: an oracle independent of the CLI's loader."""
    folder = Path(os.environ.get("FASHION_TWINS_DATA") or "/usr/share/datasets/fashion-mnist")  # as clitools looks
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz") as f:
        return np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)


# ----------------------------------------------------------------------------- config types behind the flags


def test_every_train_config_field_has_a_type_the_config_check_knows():
    """An annotation the check does not know would accept any value (the PEP 604 `int | None` once slipped through)."""
    for field in dataclasses.fields(TrainConfig):
        assert config_module._allowed_types(field.type) != (object,), (field.name, field.type)


def test_limit_train_flag_parses_to_an_int_and_a_string_limit_is_refused():
    args = build_parser().parse_args(["train", "--backend", "torch", "--out", "m.safetensors", "--limit-train", "100"])
    assert args.limit_train == 100 and isinstance(args.limit_train, int)
    with pytest.raises(ConfigError, match="limit_train"):
        TrainConfig(limit_train="100")
    assert_one_error_line(
        cli("train", "--backend", "torch", "--out", "m.safetensors", "--limit-train", "ten"), "argument --limit-train"
    )


def test_optional_int_fields_are_int_flags_with_metavar_n():
    hints = typing.get_type_hints(TrainConfig)
    optional = [f.name for f in dataclasses.fields(TrainConfig) if type(None) in typing.get_args(hints[f.name])]
    assert optional == ["limit_train", "limit_test"]
    text = " ".join(cli("train", "--help").stdout.split())
    assert "--limit-train N" in text and "--limit-test N" in text


# ----------------------------------------------------------------------------- --version, -q, unknown flags

SUBCOMMANDS = ("train", "evaluate", "predict", "compare", "benchmark", "lockstep", "convert")
# The fewest words each subcommand accepts, so the only error left is the unknown flag.
MINIMAL_ARGV = {
    "train": ["--backend", "torch", "--out", "m.safetensors"],
    "evaluate": ["--backend", "torch", "m.safetensors"],
    "predict": ["--backend", "torch", "m.safetensors", "--test-index", "0"],
    "compare": [],
    "benchmark": [],
    "lockstep": [],
    "convert": ["model.pth", "model.safetensors"],
}


def test_version_prints_one_line_with_the_package_and_library_versions():
    from importlib import metadata

    result = cli("--version")
    assert result.returncode == 0 and result.stderr == ""
    (line,) = result.stdout.splitlines()
    assert line.startswith(f"fashion-twins {fashion_twins.__version__} (torch {metadata.version('torch')}, ")
    assert f"jax {metadata.version('jax')}" in line and f"flax {metadata.version('flax')}" in line


def test_version_has_one_home_that_pyproject_reads():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fashion_twins.__version__"}


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_an_unknown_flag_points_at_that_subcommands_help(name):
    # The parser alone: were the flag ever let through, the command itself must not run (train, compare) here.
    with pytest.raises(UsageError) as error:
        build_parser().parse_args([name, *MINIMAL_ARGV[name], "--no-such-flag"])
    assert str(error.value) == f"unrecognized arguments: --no-such-flag (see fashion-twins {name} --help)"


def test_an_unknown_flag_is_one_error_line_from_the_command(tmp_path):
    result = cli("convert", tmp_path / "absent.pth", tmp_path / "out.safetensors", "-x", "1")
    assert_one_error_line(result, "unrecognized arguments: -x 1 (see fashion-twins convert --help)")


@pytest.mark.parametrize("name", ["train", "compare", "benchmark", "lockstep"])
def test_commands_that_print_progress_take_q_and_quiet(name):
    parser = build_parser()
    assert parser.parse_args([name, *MINIMAL_ARGV[name], "-q"]).quiet is True
    assert parser.parse_args([name, *MINIMAL_ARGV[name], "--quiet"]).quiet is True
    assert parser.parse_args([name, *MINIMAL_ARGV[name]]).quiet is False


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_progress_bars_are_wanted_on_a_terminal_and_not_in_a_file_or_pipe(tmp_path):
    assert progress_bars_wanted(_Stream(tty=True)) is True
    assert progress_bars_wanted(_Stream(tty=False)) is False
    with open(tmp_path / "log.txt", "w") as log:
        assert progress_bars_wanted(log) is False
    closed = io.StringIO()
    closed.close()  # isatty() raises ValueError on a closed stream: no bar, no crash
    assert progress_bars_wanted(closed) is False


def test_the_loop_makes_no_bar_where_stderr_is_not_a_terminal(monkeypatch):
    from fashion_common import loop

    monkeypatch.setattr(sys, "stderr", _Stream(tty=False))
    assert loop.progress_bar("torch", 1, 1, 10) is None
    monkeypatch.setattr(sys, "stderr", _Stream(tty=True))
    bar = loop.progress_bar("torch", 1, 1, 10)
    assert bar is not None and bar.total == 10
    bar.close()


@needs_data
@pytest.mark.slow  # its logged_run is a `python -m fashion_twins train` process
def test_train_into_a_log_file_writes_one_line_per_epoch_and_no_progress_frames(logged_run):
    log = logged_run["log"]
    assert "\r" not in log  # a bar would be carriage-return frames
    lines = log.strip().splitlines()
    assert [line.split("  train_loss")[0] for line in lines[:2]] == ["[torch] epoch   1/2", "[torch] epoch   2/2"]
    assert lines[2].startswith("[torch] wrote ") and len(lines) == 3


@needs_data
@pytest.mark.slow  # its logged_run is a `python -m fashion_twins train` process
def test_metrics_json_stores_the_spec_numbers_as_numbers(logged_run):
    spec = json.loads(logged_run["metrics"].read_text())["spec"]
    assert spec == {
        "image_size": [28, 28],
        "hidden_sizes": [512, 512],
        "num_classes": 10,
        "activation": "relu",
        "output_activation": None,
    }


# ----------------------------------------------------------------------------- evaluate --json


@needs_data
@pytest.mark.parametrize("backend", ["torch", "flax"])
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_evaluate_json_is_one_document_agreeing_with_the_text_line(logged_run, backend):
    ckpt = logged_run["checkpoint"]
    text = cli("evaluate", "--backend", backend, ckpt, "--limit-test", 500)
    result = cli("evaluate", "--backend", backend, ckpt, "--limit-test", 500, "--json")
    assert_ok(text)
    assert_ok(result)
    doc = json.loads(result.stdout)  # the whole of stdout is one JSON document
    assert list(doc) == ["backend", "checkpoint", "num_images", "test_loss", "test_accuracy", "per_class_accuracy"]
    assert (doc["backend"], doc["checkpoint"], doc["num_images"]) == (backend, str(ckpt), 500)
    assert f"test_loss {doc['test_loss']:.4f}  test_acc {100 * doc['test_accuracy']:.2f}%" in text.stdout
    assert list(doc["per_class_accuracy"]) == list(CLASS_NAMES)
    # The per-class shares, weighted by each class's count, give back the overall accuracy.
    counts = np.bincount(load_test_labels()[:500], minlength=10)
    weighted = sum(doc["per_class_accuracy"][name] * n for name, n in zip(CLASS_NAMES, counts, strict=True))
    assert weighted / 500 == pytest.approx(doc["test_accuracy"], abs=1e-12)
    assert 0.3 < doc["test_accuracy"] <= 1.0  # two short epochs; chance is 0.1


def test_evaluation_document_gives_null_for_a_class_without_images():
    labels, predictions = np.array([0, 0, 1, 9]), np.array([0, 1, 1, 9])
    doc = evaluate_cli.evaluation_document(
        "torch", "m.safetensors", {"test_loss": 0.5, "test_accuracy": 0.75}, labels, predictions
    )
    assert doc["per_class_accuracy"]["T-shirt/top"] == 0.5 and doc["per_class_accuracy"]["Trouser"] == 1.0
    assert doc["per_class_accuracy"]["Pullover"] is None  # no image of the class: undefined, not 0 and not NaN
    json.dumps(doc, allow_nan=False)  # valid JSON: no NaN anywhere


# ----------------------------------------------------------------------------- help a reader can follow


def test_train_help_explains_every_engine_it_offers():
    text = " ".join(cli("train", "--help").stdout.split())
    assert "see ENGINES" not in text
    engine_help = text.split("--engine {auto,eager,compile,cuda_graph,fused} ", 1)[1].split(" --tutorial-recipe", 1)[0]
    for engine in TORCH_ENGINES:
        assert f"{engine}:" in engine_help, (engine, engine_help)
    assert "(default: auto)" in engine_help


def test_device_help_names_every_choice_and_the_commands_own_default():
    subs = build_parser()._subparsers._group_actions[0].choices
    for name, sub in subs.items():
        for action in sub._actions:
            if action.dest == "device" and action.option_strings:
                assert action.help.startswith("where to"), (name, action.help)
                assert "cpu, gpu, or auto" in action.help, (name, action.help)
                default = action.default or TrainConfig().device  # train's flags default to None, then the config's
                assert action.help.endswith(f"(default: {default})"), (name, action.help)
