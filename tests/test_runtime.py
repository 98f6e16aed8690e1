"""The thread policy, the machine's load beside every time, and the benchmark's methodology, at unit level.

No test here times anything: loads are faked, and the benchmark's epochs are counted, not clocked.
"""

from __future__ import annotations

import json
import os

import pytest
from clitools import assert_ok, assert_one_error_line, cli, needs_data

from fashion_common.runtime import BUSY_WARNING, is_busy, parse_threads, thread_policy
from fashion_compare import benchmark, beside_hogs, machine
from fashion_compare.render import render_markdown

# ----------------------------------------------------------------------------- the policy


@pytest.mark.parametrize("load", [0.05, 1.5, 9.3, None])
def test_auto_policy_keeps_every_usable_core_and_stops_openmp_workers_spinning_whatever_the_load(load):
    policy = thread_policy("auto", 2, load, {})
    assert policy["threads"] == 2
    # the count is OpenMP's own default; no spin: measured (README, On a busy machine), so pinned here
    assert policy["env"] == {"GOMP_SPINCOUNT": "0"}


def test_one_thread_needs_no_spin_setting():
    assert thread_policy("auto", 1, 0.0, {})["env"] == {}
    assert thread_policy(1, 2, 0.0, {})["env"] == {"OMP_NUM_THREADS": "1"}


def test_a_users_thread_environment_wins_over_auto():
    policy = thread_policy("auto", 2, 0.0, {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "ACTIVE"})
    assert policy["threads"] == 3 and policy["env"] == {}  # nothing of the user's is overwritten


def test_an_explicit_thread_count_is_used_whatever_the_load():
    assert thread_policy(4, 2, 9.3, {"OMP_NUM_THREADS": "1"})["env"] == {
        "OMP_NUM_THREADS": "4",
        "GOMP_SPINCOUNT": "0",
    }


@pytest.mark.parametrize("text, value", [("auto", "auto"), ("1", 1), ("16", 16)])
def test_threads_value_is_auto_or_a_positive_integer(text, value):
    assert parse_threads(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "two", "1.5", ""])
def test_a_bad_threads_value_is_refused(text):
    with pytest.raises(ValueError, match="auto or an integer >= 1"):
        parse_threads(text)


# ----------------------------------------------------------------------------- the load and the warning


@pytest.mark.parametrize("load, cores, busy", [(0.5, 2, False), (2.0, 2, False), (2.01, 2, True), (9.3, 2, True)])
def test_the_machine_is_busy_when_the_load_is_above_the_usable_cores(load, cores, busy):
    assert is_busy(load, cores) is busy
    assert is_busy(None, cores) is False  # no load average (Windows): no claim either way


def state(load, cores=2):
    return {"load_1m": load, "load_5m": load, "usable_cores": cores, "busy": is_busy(load, cores)}


def fake_report(loads_by_stage: dict) -> dict:
    report = {
        "meta": {
            "mode": "quick",
            "date": "d",
            "device": "cpu",
            "device_name": "cpu",
            "versions": {},
            "platform": "p",
            "command": "c",
            "options": {"seed": 0},
        },
        "status": {"state": "complete", "stages_done": []},
        "checks": [],
        "plots": [],
    }
    for stage, (start, end) in loads_by_stage.items():
        machine.record_stage(report, stage, state(start), state(end))
    return report


def test_a_stage_run_above_the_cores_puts_the_warning_in_report_json_and_next_to_its_times():
    report = fake_report({"structures": (0.1, 0.1), "lockstep": (0.3, 0.4), "training": (1.2, 7.5)})
    assert set(report["machine"]["stages"]) == {"lockstep", "training"}  # only stages that time something
    assert report["machine"]["busy"] is True and report["machine"]["warning"] == BUSY_WARNING
    json.dumps(report)  # report.json can hold it
    md = render_markdown(report)
    assert md.count(BUSY_WARNING) == 1  # the header line (this fake report has no training section) ...
    assert f"**{BUSY_WARNING}**: load 1.20 on 2 cores at the start, 7.50 on 2 cores at the end" in "\n".join(
        machine.md_busy_note(report, "training")
    )  # ... and the note the training section gets
    assert machine.md_busy_note(report, "lockstep") == []


def test_a_quiet_machine_gets_no_warning_anywhere():
    report = fake_report({"lockstep": (0.3, 0.4), "training": (1.0, 1.9)})
    assert report["machine"]["busy"] is False and report["machine"]["warning"] is None
    assert "busy" not in render_markdown(report)
    assert "flax XLA's default pool" in render_markdown(report)  # the threads each twin used
    assert "load during training**: 1.00 on 2 cores at the start, 1.90 on 2 cores at the end" in render_markdown(report)


def test_the_benchmark_table_warns_when_its_run_was_busy_and_only_then():
    row = {
        "device": "cpu",
        "precision": "fp32",
        "torch_default_engine": "eager",
        "torch_engines": ["eager"],
        "threads": {"torch_threads": 1, "policy": "auto"},
        "floor_times": [1.0, 1.2],
    }
    for k, s in (("tutorial", 6.0), ("torch_eager", 3.0), ("flax", 1.5), ("floor", 1.0)):
        row.update({f"{k}_s": s, f"{k}_step_ms": s, f"{k}_min_s": s - 0.1, f"{k}_max_s": s + 0.1})
    busy = {**row, "machine": machine.window(state(0.4), state(3.1))}
    busy["busy_warning"] = machine.busy_warning([busy["machine"]])
    quiet = {**row, "machine": machine.window(state(0.4), state(0.9)), "busy_warning": None}
    assert f"**WARNING: {BUSY_WARNING}**" in benchmark.markdown_table([busy])
    assert "WARNING" not in benchmark.markdown_table([quiet])
    assert "| torch eager (default) | 3.000 s (2.90–3.10) |" in benchmark.markdown_table([quiet])


# ----------------------------------------------------------------------------- the benchmark's method


def test_benchmark_variants_are_interleaved_round_by_round():
    assert benchmark.interleaved_rounds({"a": 3, "b": 3, "c": 1}) == [["a", "b", "c"], ["a", "b"], ["a", "b"]]


def test_interleaved_epochs_warm_every_variant_first_then_alternate_and_try_the_floor_between_rounds():
    calls = []

    def make(name):
        return lambda: lambda epoch: calls.append((name, epoch))

    variants = {"a": (make("a"), 2), "b": (make("b"), 2), "c": (make("c"), 1)}
    out = benchmark.interleaved_epochs(variants, log=lambda m: None, between=lambda: calls.append(("floor", None)))
    assert calls == [
        ("a", -1),
        ("b", -1),
        ("c", -1),  # warm-ups (compilation) first
        ("a", 0),
        ("b", 0),
        ("c", 0),
        ("floor", None),  # the floor's next try between rounds
        ("a", 1),
        ("b", 1),
        ("floor", None),
    ]
    assert [len(out[k][1]) for k in "abc"] == [2, 2, 1]


def test_every_figure_is_the_median_with_its_min_and_max():
    result = {}
    benchmark.add_figures(result, "flax", [3.0, 1.0, 2.0, 9.0, 2.5], steps=10)
    assert (result["flax_s"], result["flax_min_s"], result["flax_max_s"]) == (2.5, 1.0, 9.0)
    assert result["flax_step_ms"] == 250.0


def test_the_floor_is_the_best_of_its_tries_not_their_median():
    result = {}
    benchmark.add_floor(result, [4.06, 2.15, 3.0], steps=937)  # the two runs minutes apart, and one more
    assert result["floor_s"] == 2.15 and (result["floor_min_s"], result["floor_max_s"]) == (2.15, 4.06)
    assert result["floor_times"] == [4.06, 2.15, 3.0]


def test_the_plain_epoch_ratio_of_time_to_accuracy_uses_each_twins_own_epoch():
    rows = [{"backend": "torch", "train_seconds": 30.0}, {"backend": "flax", "train_seconds": 12.0}]
    benchmark.add_plain_epoch_ratios(rows, {"torch_s": 5.0, "flax_s": 3.0}, "fast")
    assert [r["over_plain_epoch"] for r in rows] == [6.0, 4.0]
    assert all(r["recipe"] == "fast" for r in rows)


# ----------------------------------------------------------------------------- the command line


@pytest.mark.parametrize(
    "command", ["train --backend torch --out /tmp/x.safetensors", "compare", "benchmark", "lockstep"]
)
def test_every_command_that_trains_or_times_refuses_a_bad_threads_value(command):
    assert_one_error_line(cli(*command.split(), "--threads", "0"), "--threads", "auto or an integer >= 1")


@needs_data
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_train_applies_threads_and_records_them_in_metrics_json(tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        out = tmp_path / "m.safetensors"
        result = cli("train", "--backend", "torch", "--dry-run", "--threads", "1", "--out", out)
        assert_ok(result)
        threads = json.loads((tmp_path / "m.metrics.json").read_text())["threads"]
        assert threads["requested"] == 1 and threads["torch_threads"] == 1 and "--threads 1" in threads["policy"]
        assert threads["usable_cores"] == len(os.sched_getaffinity(0))
    finally:
        torch.set_num_threads(before)  # torch was already loaded here, so only its count was changed


def test_recipe_fast_starts_train_from_the_fast_config_and_flags_still_win():
    from fashion_common.config import fast_config
    from fashion_twins.cli import build_parser
    from fashion_twins.cli.train import make_config

    def config(*argv):
        return make_config(build_parser().parse_args(["train", "--backend", "flax", "--out", "m.safetensors", *argv]))

    assert config("--recipe", "fast") == fast_config()
    assert config("--recipe", "fast", "--epochs", "3").epochs == 3
    assert config("--recipe", "fast").batch_size == 256 and config().batch_size == 64  # the default stays default
    assert config("--tutorial-recipe") == config("--recipe", "tutorial")


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_contradicting_recipes_and_a_bad_lockstep_dtype_are_refused_naming_the_flag():
    assert_one_error_line(
        cli("train", "--backend", "flax", "--out", "/tmp/m.safetensors", "--recipe", "fast", "--tutorial-recipe"),
        "--tutorial-recipe",
        "--recipe fast",
    )
    assert_one_error_line(cli("lockstep", "--dtype", "float16"), "--dtype")
    assert_one_error_line(cli("benchmark", "--recipe", "tutorial"), "--recipe")


def test_torch_set_threads_sets_the_count_and_returns_the_one_before():
    import torch

    import fashion_torch

    before = torch.get_num_threads()
    try:
        assert fashion_torch.set_threads(1) == before and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_flax_set_threads_writes_xla_flags_before_the_backend_starts_and_refuses_after():
    import subprocess
    import sys

    code = (
        "import os, fashion_flax; os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=1'; "
        "print(fashion_flax.set_threads(1)); print(os.environ['XLA_FLAGS']); import jax; print(len(jax.devices()))"
    )
    env = {k: v for k, v in os.environ.items() if k != "FASHION_TWINS_XLA_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split("\n")[:3] == [
        "0",
        "--xla_force_host_platform_device_count=1 --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
        "1",
    ]  # the user's flags kept; XLA accepted the new ones and started
    import jax

    import fashion_flax

    jax.devices()  # the backend has started in this process
    with pytest.raises(RuntimeError, match="backend has started"):
        fashion_flax.set_threads(1)


# ----------------------------------------------------------------------------- the benchmark beside CPU hogs


def test_beside_hogs_gives_each_variants_slowdown_and_torch_over_flax_beside_the_hogs():
    alone = {"torch_s": 2.0, "flax_s": 1.0, "nnx_s": 1.1, "floor_s": 0.8}
    busy = {"torch_s": 5.0, "flax_s": 2.5, "nnx_s": 3.3}  # the floor missing from one run is left out
    got = beside_hogs.ratios(alone, busy)
    assert set(got["variants"]) == {"torch", "flax", "nnx"}
    assert got["variants"]["nnx"] == {"alone_s": 1.1, "busy_s": 3.3, "busy_over_alone": pytest.approx(3.0)}
    assert got["busy_torch_over_flax"] == pytest.approx(2.0) and got["alone_torch_over_flax"] == pytest.approx(2.0)
    state = {"load_1m": 0.4, "load_5m": 0.5, "usable_cores": 2, "busy": False}
    text = beside_hogs.markdown(got, {"alone": {"machine": machine.window(state, state)}}, 2)
    assert "| nnx | 1.10 s | 3.30 s | 3.00 |" in text and "load 0.4 -> 0.4 on 2 usable cores" in text


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_beside_hogs_ends_its_hogs_when_the_benchmark_beside_them_fails(monkeypatch):
    started = []
    real_start = beside_hogs.start_hogs

    def start(n):
        started.extend(real_start(n))
        return started

    calls = iter([{"result": {}, "machine": {}}])

    def bench(out, repeats, extra):
        try:
            return next(calls)
        except StopIteration:
            raise RuntimeError("benchmark failed beside the hogs") from None

    monkeypatch.setattr(beside_hogs, "start_hogs", start)
    monkeypatch.setattr(beside_hogs, "run_benchmark", bench)
    with pytest.raises(RuntimeError, match="beside the hogs"):
        beside_hogs.main(["--hogs", "2"])
    assert len(started) == 2 and all(hog.poll() is not None for hog in started)


def test_beside_hogs_refuses_zero_hogs_in_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        beside_hogs.main(["--hogs", "0"])
    assert info.value.code == 2 and "argument --hogs: must be at least 1, got 0" in capsys.readouterr().err


# ----------------------------------------------------------------------------- what other processes took


def counters(busy, own, wall):
    return {"busy_s": busy, "own_s": own, "wall_s": wall}


def test_other_processes_share_is_the_cores_busy_time_less_this_processs_own_over_the_span():
    from fashion_common.runtime import others_share

    # 10 s on 2 cores: 20 core-seconds; 19 busy, 18 of them ours (a 2-thread benchmark, idle box)
    assert others_share(counters(100, 50, 0), counters(119, 68, 10), cores=2) == pytest.approx(0.05)
    # the same span beside two hogs: the cores were busy throughout, we got half
    assert others_share(counters(100, 50, 0), counters(120, 60, 10), cores=2) == pytest.approx(0.5)
    assert others_share(counters(0, 0, 0), counters(1, 0, 0.1), cores=2) is None  # too short to tell
    assert others_share(None, counters(1, 0, 5), cores=2) is None  # no /proc/stat


def test_a_span_is_busy_by_what_others_took_not_by_a_load_average_that_counts_the_timed_program_itself():
    own_two_threads = {**state(2.07), "cpu": counters(100, 50, 0)}  # load 2.07 > 2 cores: the load rule says busy
    end = {**state(2.07), "cpu": counters(119, 68, 10)}
    span = machine.window(own_two_threads, end)
    assert span["others_cpu_share"] == pytest.approx(0.05) and span["busy"] is False
    hogs = machine.window({**state(1.0), "cpu": counters(100, 50, 0)}, {**state(1.0), "cpu": counters(120, 60, 10)})
    assert (
        hogs["busy"] is True and machine.why_busy([hogs]) == "other processes took up to 50% of the usable cores' time"
    )
    assert machine.busy_warning([span]) is None and machine.busy_warning([span, hogs]) == BUSY_WARNING


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_a_real_cpu_hog_beside_a_sleeping_process_is_seen_as_other_processes_work():
    import subprocess
    import sys
    import time

    from fashion_common.runtime import OTHERS_BUSY_SHARE, machine_state

    if not hasattr(os, "sched_setaffinity") or not os.path.exists("/proc/stat"):
        pytest.skip("no CPU affinity or /proc/stat: the load average decides on this OS")
    saved = os.sched_getaffinity(0)
    cpu = min(saved)
    os.sched_setaffinity(0, {cpu})  # one usable core, shared with the hog: its share does not depend on the core count
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # inherits the one-core affinity
    try:
        time.sleep(0.5)  # let it start spinning
        start = machine_state()
        time.sleep(2.0)  # this process sleeps: whatever the core did was someone else's work
        span = machine.window(start, machine_state())
    finally:
        hog.kill()
        hog.wait()
        os.sched_setaffinity(0, saved)
    assert span["start"]["usable_cores"] == 1
    # The hog keeps the core busy (work by anything else on it only adds to the share).
    assert span["others_cpu_share"] >= 0.9 > OTHERS_BUSY_SHARE
    assert span["busy"] is True


def test_the_matmul_precision_report_says_what_each_loaded_framework_was_set_to():
    import fashion_flax
    import fashion_torch
    from fashion_common.runtime import matmul_precision_report

    try:
        fashion_torch.set_matmul_precision("tf32")
        fashion_flax.set_matmul_precision("highest")
        assert matmul_precision_report() == {"torch": "tf32", "jax": "highest"}
        fashion_torch.set_matmul_precision("highest")
        fashion_flax.set_matmul_precision("tf32")
        assert matmul_precision_report() == {"torch": "highest", "jax": "tf32"}
    finally:  # the suite's pinned mode
        fashion_torch.set_matmul_precision("highest")
        fashion_flax.set_matmul_precision("highest")
