"""The basics of a command line (issue 17, part 2): --version, -q, errors that name the subcommand's help,
progress bars only on a terminal, machine-readable `evaluate --json`, help text a reader can follow."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from clitools import assert_one_error_line, cli

from fashion_common import config as config_module
from fashion_common.config import TrainConfig
from fashion_common.errors import ConfigError
from fashion_twins.cli import build_parser

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
