"""Every flag is checked at parse time, before data loading or a framework import, with the flag named.

Example tests pin the known edges (seeds at 0 and 2**32 - 1 and one past, nan, inf, --top 0 and 11);
hypothesis draws arbitrary text and numbers for the numeric flags and asserts the parser either
accepts an in-range value or raises the one UsageError that names the flag, never anything else.
"""

from __future__ import annotations

import math

import pytest
from clitools import assert_one_error_line, cli, needs_data
from hypothesis import given, settings
from hypothesis import strategies as st

from fashion_common.checkpoint import metrics_path_for as canonical_metrics_path
from fashion_common.config import TrainConfig
from fashion_common.distributed import MAX_TIMEOUT_S, DistributedError, check_timeout
from fashion_common.errors import ConfigError
from fashion_twins.cli import build_parser
from fashion_twins.cli.common import UsageError
from fashion_twins.cli.train import make_config

SEED_MAX = 2**32 - 1


def parse(*argv):
    return build_parser().parse_args([str(a) for a in argv])


def train_args(*extra):
    return parse("train", "--backend", "torch", "--out", "/tmp/never-written.safetensors", *extra)


# ----------------------------------------------------------------------------- examples


@pytest.mark.parametrize("seed", [0, SEED_MAX])
def test_seeds_at_both_ends_of_the_range_are_accepted(seed):
    assert make_config(train_args("--seed", seed)).seed == seed


@pytest.mark.parametrize("seed", ["-1", str(2**32), "1.5", "0x10", ""])
@pytest.mark.parametrize("command", ["train", "compare", "lockstep"])
def test_seeds_outside_0_to_2_32_minus_1_are_refused_naming_the_flag(command, seed, tmp_path):
    extra = ("--backend", "torch", "--out", tmp_path / "m.safetensors") if command == "train" else ()
    assert_one_error_line(cli(command, *extra, "--seed", seed), "argument --seed:")
    assert list(tmp_path.iterdir()) == []


def test_train_config_itself_refuses_a_seed_numpy_and_jax_cannot_take():
    with pytest.raises(ConfigError, match="seed must be in 0..4294967295"):
        TrainConfig(seed=2**32)
    with pytest.raises(ConfigError, match="seed"):
        TrainConfig(seed=-1)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999", "abc"])
@pytest.mark.parametrize("flag", ["--lr", "--momentum", "--weight-decay", "--label-smoothing"])
def test_non_finite_or_non_numeric_floats_are_refused_at_parse_time(flag, value):
    # --flag=value: argparse would read a bare "-inf" as an option, not a value.
    assert_one_error_line(
        cli("train", "--backend", "flax", "--out", "/tmp/x.safetensors", f"{flag}={value}"),
        f"argument {flag}: must be a finite number",
    )


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (
            ("predict", "--backend", "torch", "c.safetensors", "--test-index", "0", "--top", "0"),
            "argument --top: must be an integer in 1..10",
        ),
        (
            ("predict", "--backend", "torch", "c.safetensors", "--test-index", "0", "--top", "11"),
            "argument --top: must be an integer in 1..10",
        ),
        (
            ("predict", "--backend", "torch", "c.safetensors", "--test-index", "-3"),
            "argument --test-index: must be an integer >= 0",
        ),
        (("predict", "--backend", "torch", "c.safetensors"), "give at least one IMAGE or --test-index"),
        (
            ("predict", "--backend", "torch", "c.safetensors", "x.png", "--invert", "maybe"),
            "argument --invert: invalid choice",
        ),
        (
            ("evaluate", "--backend", "torch", "c.safetensors", "--limit-test", "0"),
            "argument --limit-test: must be an integer >= 1",
        ),
        (
            ("evaluate", "--backend", "torch", "c.safetensors", "--output-activation", "tanh"),
            "argument --output-activation: invalid choice",
        ),
        (("benchmark", "--repeats", "0"), "argument --repeats: must be an integer >= 1"),
        (("benchmark", "--precision", "fp32"), "argument --precision: invalid choice: 'fp32'"),
        (("lockstep", "--weight-every", "0"), "argument --weight-every: must be an integer >= 1"),
        (("lockstep", "--lr", "0"), "argument --lr: must be a positive number"),
        (("compare", "--quick-epochs", "0"), "argument --quick-epochs: must be an integer >= 1"),
        (("compare", "--full", "--dry-run"), "argument --dry-run: contradicts --full"),
        (("train", "--backend", "torch"), "the following arguments are required: --out"),
        (
            ("train", "--backend", "torch", "--out", "m.safetensors", "--batch-size", "0"),
            "argument --batch-size: batch_size must be >= 1",
        ),
        (
            ("train", "--backend", "torch", "--out", "m.safetensors", "--limit-train", "-5"),
            "argument --limit-train: limit_train must be >= 1",
        ),
        (("convert", "only_one_path.pth"), "the following arguments are required: OUT"),
        (("--no-such-flag",), "COMMAND"),
    ],
)
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_every_bad_flag_gives_one_error_line_naming_it(argv, fragment):
    assert_one_error_line(cli(*argv), fragment)


# ----------------------------------------------------------------------------- bounds of what each flag feeds


LAUNCHES = {  # the data-parallel launches --timeout reaches: torch under torchrun, flax and nnx on a mesh
    "torch under torchrun": ("--backend", "torch"),
    "flax --devices 2": ("--backend", "flax", "--devices", "2"),
    "nnx --coordinator": ("--backend", "nnx", "--coordinator", "127.0.0.1:1234", "--num-processes", "2"),
}


@pytest.mark.parametrize("launch", list(LAUNCHES))
@pytest.mark.parametrize("timeout", ["1e308", "1e10", str(MAX_TIMEOUT_S + 1), "0.5"])
def test_a_timeout_no_launcher_takes_is_refused_at_parse_time_alike_for_every_twin(
    monkeypatch, tmp_path, launch, timeout
):
    monkeypatch.setenv("RANK", "0")  # torchrun's variables: what the torch twin's check sees under torchrun
    monkeypatch.setenv("WORLD_SIZE", "2")
    if launch != "torch under torchrun":
        monkeypatch.delenv("RANK")
        monkeypatch.delenv("WORLD_SIZE")
    extra = ("--process-id", "0") if "coordinator" in launch else ()
    # --epochs 0 is refused right after parsing: the --timeout must be refused first, at parse time (and
    # where it is not, the test fails at once instead of joining a world of two or training a run).
    extra += ("--epochs", "0")
    result = cli("train", *LAUNCHES[launch], *extra, "--out", tmp_path / "m.safetensors", "--timeout", timeout)
    assert_one_error_line(
        result, f"argument --timeout: must be a number of seconds in 1..{MAX_TIMEOUT_S}", f"got {float(timeout)!r}"
    )
    assert list(tmp_path.iterdir()) == []


def test_the_longest_timeout_every_launcher_takes_is_accepted_and_checked_in_the_twins_too():
    assert train_args("--timeout", MAX_TIMEOUT_S).timeout == MAX_TIMEOUT_S == (2**31 - 1) // 1000
    with pytest.raises(DistributedError, match="argument --timeout: must be a number of seconds in 1..2147483"):
        check_timeout(1e10)  # what each twin's own set-up calls (init_process_group, initialize)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (("--epochs", str(2**31)), "argument --epochs: must be an integer in -2147483647..2147483647"),
        (("--batch-size", "9" * 30), "argument --batch-size: must be an integer in"),
        (("--lr", "1e39"), "argument --lr: must be a number within +-3.402823e+38 (float32)"),
        (("--lr", "1e-40"), "argument --lr: must be 0 or at least 1.175494e-38 in size"),
        (("--weight-decay=-1e300",), "argument --weight-decay: must be a number within"),
        (("--devices", str(2**31)), "argument --devices: must be an integer in 1..2147483647"),
        (("--threads", str(2**31)), "argument --threads: must be auto or an integer in 1..2147483647"),
    ],
)
def test_numbers_past_what_the_twins_hold_int32_and_float32_are_refused_naming_the_flag(argv, fragment, tmp_path):
    assert_one_error_line(cli("train", "--backend", "flax", "--out", tmp_path / "m.safetensors", *argv), fragment)
    assert list(tmp_path.iterdir()) == []


def every_parser():
    """The top-level parser and each subcommand's, as build_parser makes them."""
    import argparse

    top = build_parser()
    subs = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return [top, *subs.choices.values()]


def test_no_parser_takes_a_prefix_of_a_flag_for_the_flag():
    parsers = every_parser()
    assert len(parsers) == 8 and all(p.allow_abbrev is False for p in parsers)
    # argparse's default would read --epoch 2 as --epochs 2 and train for two epochs without a word.
    assert_one_error_line(
        cli("train", "--backend", "flax", "--out", "m.safetensors", "--epoch", "2"),
        "unrecognized arguments: --epoch 2; did you mean --epochs? (see fashion-twins train --help)",
    )


@pytest.mark.parametrize(
    "argv, hint",
    [
        (("train", "--backend", "torch", "--out", "m.safetensors", "--batchsize", "32"), "did you mean --batch-size?"),
        (("lockstep", "--batchsize=32"), "did you mean --batch-size?"),
        (("evaluate", "--backend", "torch", "c.safetensors", "--limit-tset", "5"), "did you mean --limit-test?"),
        (("compare", "--lockstep-step", "5"), "did you mean --lockstep-steps?"),
        (("predict", "--backend", "torch", "c.safetensors", "--test-indx", "0"), "did you mean --test-index?"),
    ],
)
def test_an_unknown_flag_near_a_known_one_gets_the_known_one_suggested(argv, hint):
    assert_one_error_line(cli(*argv), f"; {hint} (see fashion-twins {argv[0]} --help)")


def test_an_unknown_flag_near_no_known_one_gets_no_suggestion():
    result = cli("train", "--backend", "torch", "--out", "m.safetensors", "--steps", "5")  # lockstep's, not train's
    assert_one_error_line(result, "unrecognized arguments: --steps 5 (see fashion-twins train --help)")


COMPUTING = {
    "train": ("train", "--backend", "torch", "--out", "m.safetensors"),
    "evaluate": ("evaluate", "--backend", "flax", "c.safetensors"),
    "predict": ("predict", "--backend", "nnx", "c.safetensors", "x.png"),
    "compare": ("compare",),
    "lockstep": ("lockstep",),
    "benchmark": ("benchmark",),
}


@pytest.mark.parametrize("command", sorted(COMPUTING))
def test_every_command_that_computes_takes_precision_alike(command):
    assert parse(*COMPUTING[command]).precision in ("highest", None)  # None: benchmark's per-device default
    assert parse(*COMPUTING[command], "--precision", "tf32").precision == "tf32"
    assert parse(*COMPUTING[command], "--precision", "highest").precision == "highest"
    assert_one_error_line(cli(*COMPUTING[command], "--precision", "fp16"), "argument --precision: invalid choice")


@pytest.fixture
def precision_restored():
    """Both frameworks back at highest, the suite's pinned mode, whatever the test set."""
    import fashion_flax
    import fashion_torch

    yield
    fashion_torch.set_matmul_precision("highest")
    fashion_flax.set_matmul_precision("highest")


@pytest.mark.parametrize("backend", ["torch", "flax", "nnx"])
def test_predict_sets_the_precision_it_is_given_in_the_twin_that_runs(tmp_path, backend, precision_restored):
    import jax
    import numpy as np
    import torch
    from PIL import Image

    from fashion_common import checkpoint as canonical
    from fashion_common.spec import checkpoint_shapes

    state = {key: np.zeros(shape, np.float32) for key, shape in checkpoint_shapes().items()}
    ckpt = canonical.write_state(tmp_path / "m.safetensors", state)
    Image.fromarray(np.zeros((28, 28), np.uint8), "L").save(tmp_path / "x.png")

    def mode():
        if backend == "torch":
            return torch.get_float32_matmul_precision()  # "high" lets TF32 in, "highest" keeps it out
        return jax.config.jax_default_matmul_precision  # "default" is TF32 on a GPU

    for precision, expected in (("tf32", {"torch": "high"}.get(backend, "default")), ("highest", "highest")):
        result = cli("predict", "--backend", backend, ckpt, tmp_path / "x.png", "--precision", precision)
        assert result.returncode == 0, result.stderr
        assert mode() == expected


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("backend", ["torch", "nnx"])
def test_train_sets_its_precision_and_records_it_in_metrics_json(tmp_path, backend, precision_restored):
    import json

    out = tmp_path / "m.safetensors"
    result = cli(
        "train", "--backend", backend, "--dry-run", "--limit-train", 256, "--limit-test", 64, "--quiet",
        "--precision", "tf32", "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads(canonical_metrics_path(out).read_text())
    assert metrics["matmul_precision_by_framework"][{"torch": "torch", "nnx": "jax"}[backend]] == "tf32"


def test_compare_passes_its_precision_to_the_report_and_refuses_one_the_report_cannot_run():
    from fashion_compare.report import CompareOptions
    from fashion_twins.cli.compare import make_options

    assert make_options(parse("compare", "--precision", "tf32"), "fashion-twins compare").precision == "tf32"
    assert make_options(parse("compare"), "fashion-twins compare").precision == "highest"
    with pytest.raises(ValueError, match="precision must be highest or tf32"):
        CompareOptions(precision="both").check()


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_predict_checks_the_test_index_range_before_building_a_model(monkeypatch):
    import fashion_twins.cli.common as common

    monkeypatch.setattr(
        common, "backend_module", lambda name: pytest.fail("a twin was imported before --test-index was checked")
    )
    from clitools import HAVE_DATA

    if not HAVE_DATA:
        pytest.skip("needs the real Fashion-MNIST for the range")
    assert_one_error_line(
        cli("predict", "--backend", "torch", "c.safetensors", "--test-index", "10000"),
        "argument --test-index: 10000 is out of range",
    )


# ----------------------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.integers(min_value=-(2**70), max_value=2**70).map(str), st.text(max_size=12)))
def test_seed_text_is_accepted_exactly_when_it_is_an_integer_in_range(text):
    try:
        args = train_args("--seed", text)
    except UsageError as e:
        assert str(e).startswith("argument --seed:")
        try:
            value = int(text, 10)
        except ValueError:
            return
        assert not 0 <= value <= SEED_MAX
    else:
        assert 0 <= args.seed <= SEED_MAX and args.seed == int(text, 10)


FLOAT_FLAGS = ["--lr", "--momentum", "--weight-decay", "--label-smoothing"]
INT_FLAGS = ["--epochs", "--batch-size", "--eval-batch-size", "--limit-train", "--limit-test"]


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from(FLOAT_FLAGS + INT_FLAGS),
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True).map(repr),
        st.integers(min_value=-(2**40), max_value=2**40).map(str),
        st.text(max_size=8),
    ),
)
def test_any_value_of_a_numeric_train_flag_gives_a_valid_config_or_a_usage_error_naming_it(flag, text):
    """Parse and make_config are all that run before the data: they must never raise anything else."""
    try:
        config = make_config(train_args(flag, text))
    except UsageError as e:
        assert str(e).startswith(f"argument {flag}:"), str(e)
        return
    value = getattr(config, flag[2:].replace("-", "_"))
    assert isinstance(value, (int, float)) and math.isfinite(value)
    config._check()  # what was accepted is a config the loop can run


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=10), max_size=4))
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_arbitrary_argv_after_a_subcommand_never_raises_past_the_one_error_path(words):
    """Random words after `predict --backend torch` (no image exists): exit 2 with one line, or a help text."""
    result = cli(
        "predict",
        "--backend",
        "torch",
        "/nonexistent/c.safetensors",
        "--invert",
        "no",
        *[w for w in words if w not in ("-h", "--help")],
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
