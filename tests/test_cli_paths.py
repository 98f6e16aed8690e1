"""Nothing is lost: outputs that alias each other or an input, and outputs that cannot be written, are refused
before any work.

fashion_common/paths.py is tested directly, then through each subcommand. "Before any work" is
checked by making the data loader raise: a refused command never reaches it, and writes nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from clitools import assert_ok, assert_one_error_line, cli, needs_data

from fashion_common import checkpoint as canonical
from fashion_common.paths import PathError, check_no_aliases, check_output_dir, check_output_file, same_file


@pytest.fixture
def no_data(monkeypatch):
    """Fail the test if anything loads Fashion-MNIST: the checks must come first."""
    import fashion_common.data

    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the path checks")

    monkeypatch.setattr(fashion_common.data, "load_fashion_mnist", refuse)


# ----------------------------------------------------------------------------- fashion_common/paths.py


def test_same_file_sees_symlinks_and_hard_links_but_not_two_new_paths(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("{}")
    (tmp_path / "sym.json").symlink_to(target)
    os.link(target, tmp_path / "hard.json")
    assert same_file(target, tmp_path / "sym.json")
    assert same_file(target, tmp_path / "hard.json")
    assert same_file(tmp_path / "new.json", tmp_path / "sub" / ".." / "new.json")  # not yet existing, one real path
    assert not same_file(tmp_path / "new.json", tmp_path / "other.json")


def test_check_no_aliases_names_both_flags_and_allows_listed_pairs_and_two_inputs(tmp_path):
    path = tmp_path / "m.safetensors"
    with pytest.raises(PathError, match=r"^--out .*m\.safetensors and --metrics .*m\.safetensors are the same file"):
        check_no_aliases({"--out": path, "--metrics": path})
    check_no_aliases({"--out": path}, {"--resume": path}, allowed=[("--out", "--resume")])
    check_no_aliases({"--out": tmp_path / "x"}, {"--a": path, "--b": path})  # reading one file twice is fine


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda d: d, "is a folder"),  # an existing directory given as a file
        (lambda d: d / "missing" / "m.safetensors", "does not exist"),
        (
            lambda d: (d / "f").write_text("x") and d / "f" / "m.safetensors",
            "Not a directory",
        ),  # a file where a folder is needed
        (lambda d: Path("/proc/m.safetensors"), "cannot create files in /proc"),  # os.access says yes here
        (lambda d: Path("/dev/null"), "is not a regular file"),  # a rename would replace the device node
    ],
    ids=["directory", "missing-folder", "file-as-folder", "proc", "device"],
)
def test_check_output_file_refuses_paths_that_cannot_be_written(tmp_path, make, fragment):
    with pytest.raises(PathError, match="--out") as info:
        check_output_file(make(tmp_path), "--out")
    assert fragment in str(info.value)


def test_check_output_file_refuses_a_fifo_without_opening_it(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(PathError, match="is not a regular file"):
        check_output_file(tmp_path / "pipe", "--metrics")  # opening it would block forever


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes into read-only folders; the /proc case covers a folder that refuses writes"
)
def test_check_output_file_refuses_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    with pytest.raises(PathError, match="cannot create files"):
        check_output_file(folder / "m.safetensors", "--out")


def test_check_output_dir_accepts_a_new_nested_folder_and_refuses_a_file_or_proc(tmp_path):
    check_output_dir(tmp_path / "a" / "b", "--out-dir")  # created later, with parents
    assert not (tmp_path / "a").exists()  # the check itself creates nothing
    (tmp_path / "file").write_text("x")
    with pytest.raises(PathError, match="is a file"):
        check_output_dir(tmp_path / "file", "--out-dir")
    with pytest.raises(PathError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "file" / "report", "--out-dir")
    with pytest.raises(PathError, match="cannot create files"):
        check_output_dir("/proc/report", "--out-dir")


def test_probing_a_folder_leaves_no_file_behind(tmp_path):
    check_output_file(tmp_path / "m.safetensors", "--out")
    check_output_dir(tmp_path, "--out-dir")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- through the subcommands


def _linked(tmp_path, kind: str, name: str) -> Path:
    """A second name for tmp_path/name: a symlink or a hard link (the file is created first)."""
    target = tmp_path / name
    target.write_bytes(b"keep me")
    link = tmp_path / f"link_{kind}"
    link.symlink_to(target) if kind == "symlink" else os.link(target, link)
    return link


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_train_refuses_metrics_that_is_out_through_a_link_and_writes_nothing(tmp_path, no_data, kind):
    link = _linked(tmp_path, kind, "m.safetensors")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = cli("train", "--backend", "torch", "--dry-run", "--out", tmp_path / "m.safetensors", "--metrics", link)
    assert_one_error_line(result, "--out", "--metrics", "same file")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "m.safetensors").read_bytes() == b"keep me"


@pytest.mark.parametrize(
    "extra, flags",
    [
        (("--metrics", "{d}/m.state.safetensors"), ("--out's sidecar", "--metrics")),
        (("--resume", "{d}/old.safetensors", "--metrics", "{d}/old.safetensors"), ("--metrics", "--resume")),
        (("--resume", "{d}/m.state.safetensors"), ("--out's sidecar", "--resume")),
        (
            ("--resume", "{d}/old.safetensors", "--metrics", "{d}/old.state.safetensors"),
            ("--metrics", "--resume's sidecar"),
        ),
    ],
    ids=["metrics-is-sidecar", "metrics-is-resume", "resume-is-sidecar", "metrics-is-resume-sidecar"],
)
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_train_refuses_every_alias_between_its_outputs_and_inputs_naming_both(tmp_path, no_data, extra, flags):
    args = [a.format(d=tmp_path) for a in extra]
    result = cli("train", "--backend", "flax", "--dry-run", "--out", tmp_path / "m.safetensors", *args)
    assert_one_error_line(result, *flags, "same file")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_train_refuses_an_unwritable_metrics_path_before_loading_data(tmp_path, no_data):
    result = cli("train", "--backend", "torch", "--out", tmp_path / "m.safetensors", "--metrics", tmp_path)
    assert_one_error_line(result, "--metrics", "is a folder")


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_compare_refuses_an_out_dir_that_is_the_data_dir_or_a_file(tmp_path, no_data):
    assert_one_error_line(
        cli("compare", "--dry-run", "--out-dir", tmp_path, "--data-dir", tmp_path),
        "--out-dir",
        "--data-dir",
        "same file",
    )
    (tmp_path / "f").write_text("x")
    assert_one_error_line(cli("compare", "--dry-run", "--out-dir", tmp_path / "f"), "--out-dir", "is a file")


@pytest.mark.parametrize("command", ["benchmark", "lockstep"])
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_benchmark_and_lockstep_check_out_before_loading_data(tmp_path, no_data, command):
    assert_one_error_line(cli(command, "--out", "/proc/x.json"), "--out /proc/x.json", "cannot create files")
    assert_one_error_line(cli(command, "--out", tmp_path), "--out", "is a folder")


# ----------------------------------------------------------------------------- resuming a finished run


@needs_data
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_resuming_a_finished_run_into_a_new_out_writes_all_three_files_and_into_itself_writes_nothing(tmp_path):
    first = tmp_path / "a.safetensors"
    assert_ok(cli("train", "--backend", "torch", "--dry-run", "--quiet", "--out", first))
    weights, sidecar = first.read_bytes(), canonical.train_state_path(first).read_bytes()

    result = cli(
        "train", "--backend", "torch", "--dry-run", "--quiet", "--resume", first, "--out", tmp_path / "b.safetensors"
    )
    assert_ok(result)
    assert "already holds all 1 epochs" in result.stdout and "wrote" in result.stdout
    assert (tmp_path / "b.safetensors").read_bytes() == weights
    assert (tmp_path / "b.state.safetensors").read_bytes() == sidecar
    copied = json.loads((tmp_path / "b.metrics.json").read_text())
    assert copied["epochs"] == json.loads((tmp_path / "a.metrics.json").read_text())["epochs"]

    mtime = first.stat().st_mtime_ns
    result = cli("train", "--backend", "torch", "--dry-run", "--quiet", "--resume", first, "--out", first)
    assert_ok(result)
    assert "nothing written" in result.stdout and "wrote" not in result.stdout
    assert first.stat().st_mtime_ns == mtime
