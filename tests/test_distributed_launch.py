"""Data-parallel launches: a wrong one fails in one line on every process; a multi-node one trains as one device.

Real processes on localhost, started as a user starts them (two `fashion-twins train` processes
with --coordinator, two ranks with torchrun's variables, two torchrun agents as two nodes of one
c10d rendezvous). A wrong launch must end, on every process, with exit 2 and exactly one
`error: ...` line on stderr naming what is wrong: no traceback, no XLA fatal log, no segfault,
and never two processes that silently train on different worlds.

Tolerance 1e-5 (max |dW|) for the two-node run, as in tests/test_cli_distributed.py: a
data-parallel step sums the same products in another order, so the runs differ by float32 rounding.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from clitools import assert_ok, cli, needs_data
from test_cli_distributed import FLAGS
from test_distributed import ROOT, TOL, child_env, weights

from fashion_common import distributed as common
from fashion_common.config import tutorial_config
from fashion_common.data import FashionData
from fashion_common.distributed import DistributedError
from fashion_common.metrics import max_weight_diff

# A run too short to matter: the failures come before the first step; 4 steps if one is ever taken.
SHORT = ["--limit-train", "256", "--limit-test", "64", "--epochs", "1", "--batch-size", "64", "--device", "cpu"]
JOIN_TIMEOUT_S = 5  # --timeout where a process waits for a coordinator that never comes: the test lasts about this
AGREE_TIMEOUT_S = 30  # --timeout where both processes come: generous, they stop as soon as both have published


def train_cmd(backend: str, *args) -> list:
    return [sys.executable, "-m", "fashion_twins", "train", "--backend", backend, *SHORT, "--quiet", *args]


def run_together(cmds_envs, timeout: float = 240) -> list:
    """Start every (cmd, env) at once; wait for all. Returns [(returncode, stdout, stderr, seconds)], in order."""
    start = time.monotonic()
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd, env in cmds_envs
    ]
    try:
        results = []
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append((p.returncode, out, err, time.monotonic() - start))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def flax_processes(tmp_path, per_process: list, port: int, timeout_s: float, backends=None) -> list:
    """Process I runs `train --backend B ... --coordinator 127.0.0.1:PORT --process-id I` plus per_process[I].

    B is backends[I] (default: flax for every process).
    """
    backends = backends or ["flax"] * len(per_process)
    return run_together(
        [
            (
                train_cmd(
                    backends[i],
                    "--out",
                    str(tmp_path / "flax.safetensors"),
                    "--coordinator",
                    f"127.0.0.1:{port}",
                    "--process-id",
                    str(i),
                    "--timeout",
                    str(timeout_s),
                    *extra,
                ),
                child_env(),
            )
            for i, extra in enumerate(per_process)
        ]
    )


def torch_ranks(tmp_path, per_rank: list, timeout_s: float) -> list:
    """Rank R started by hand with torchrun's variables (one stderr per rank, no agent's report in between)."""
    env = child_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(common.free_port()), WORLD_SIZE=str(len(per_rank)))
    return run_together(
        [
            (
                train_cmd("torch", "--out", str(tmp_path / "torch.safetensors"), "--timeout", str(timeout_s), *extra),
                {**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            )
            for r, extra in enumerate(per_rank)
        ]
    )


def assert_each_one_error_line(results, *fragments_per_process) -> None:
    """Every process: exit 2, and stderr is exactly one `error: ...` line holding its fragments."""
    for index, ((code, _, err, _), fragments) in enumerate(zip(results, fragments_per_process, strict=True)):
        assert code == 2, (index, code, err[-3000:])
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (index, err[-3000:])
        for fragment in fragments:
            assert fragment in lines[0], (index, fragment, lines[0])


# ----------------------------------------------------------------------------- the pieces, in this process


def test_a_port_something_listens_on_is_refused_naming_the_flag_and_the_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(
            DistributedError, match=rf"--coordinator 127\.0\.0\.1:{port}: port {port} is already in use"
        ):
            common.check_port_free(f"127.0.0.1:{port}")
    common.check_port_free(f"127.0.0.1:{common.free_port()}")  # a free one passes


def _data(pixel: int) -> FashionData:
    images, labels = np.full((4, 28, 28), pixel, np.uint8), np.arange(4, dtype=np.uint8)
    return FashionData(images, labels, images[:2], labels[:2])


def test_world_facts_that_differ_are_named_with_both_values_and_equal_ones_pass():
    config = tutorial_config(epochs=1)

    def facts(pixel=0, seed=0, size=2):
        return common.world_facts("flax", "--num-processes", size, config.replace(seed=seed), _data(pixel))

    assert common.world_disagreement([facts(), facts()]) is None
    assert common.facts_digest(facts()) == common.facts_digest(facts())
    assert common.world_disagreement([facts(), facts(size=3)], "process").startswith(
        "the processes disagree before the first step: process 1's --num-processes is 3, process 0's is 2; "
    )
    assert "rank 2's --seed is 7, rank 0's is 0" in common.world_disagreement([facts(), facts(), facts(seed=7)], "rank")
    one_pixel = common.world_disagreement([facts(), facts(pixel=1)])
    assert "process 1's data is sha256 " in one_pixel
    assert common.facts_digest(facts()) != common.facts_digest(facts(pixel=1))


def test_the_resume_point_is_a_fact_the_processes_must_share(monkeypatch):
    # the sidecar's counters as fashion_common.checkpoint reads them (its parsing is tested with the checkpoints)
    monkeypatch.setattr(common, "read_train_state", lambda path: ({}, {"epoch": 3, "run_id": "abc"}))
    config, path = tutorial_config(epochs=1), "ckpt.safetensors"
    with_resume = common.world_facts("torch", "WORLD_SIZE", 2, config, _data(0), resume=path)
    without = common.world_facts("torch", "WORLD_SIZE", 2, config, _data(0))
    assert with_resume["--resume"] == "epoch 3 of run abc"
    assert "rank 1's --resume is none, rank 0's is epoch 3 of run abc" in common.world_disagreement(
        [with_resume, without], "rank"
    )


# ----------------------------------------------------------------------------- wrong launches, real processes


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_a_taken_coordinator_port_is_one_error_line_on_every_flax_process(tmp_path):
    with socket.socket() as taken:  # another program already listens on the port given as --coordinator
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        results = flax_processes(tmp_path, [["--num-processes", "2"]] * 2, port, JOIN_TIMEOUT_S)
    assert_each_one_error_line(
        results,
        [f"--coordinator 127.0.0.1:{port}: port {port} is already in use on this machine"],
        [f"process 1: the 2 processes did not all join the coordinator at 127.0.0.1:{port} within {JOIN_TIMEOUT_S} s"],
    )
    assert results[1][3] < JOIN_TIMEOUT_S + 60  # bounded by --timeout (plus the start of Python and JAX)


@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_a_coordinator_waiting_for_more_processes_than_come_ends_in_one_line_on_each_within_the_timeout(tmp_path):
    # process 0 was told 3 processes, process 1 was told 2: the coordinator would wait for a third forever
    results = flax_processes(
        tmp_path, [["--num-processes", "3"], ["--num-processes", "2"]], common.free_port(), JOIN_TIMEOUT_S
    )
    assert_each_one_error_line(
        results,
        ["process 0: the 3 processes did not all join the coordinator", f"within {JOIN_TIMEOUT_S} s (--timeout)"],
        ["process 1: the 2 processes did not all join the coordinator", f"within {JOIN_TIMEOUT_S} s (--timeout)"],
    )
    assert max(r[3] for r in results) < JOIN_TIMEOUT_S + 60


@needs_data
@pytest.mark.parametrize(
    "extra0, extra1, named",
    [
        (["--num-processes", "2"], ["--num-processes", "3"], "process 1's --num-processes is 3, process 0's is 2"),
        (
            ["--num-processes", "2", "--seed", "1"],
            ["--num-processes", "2", "--seed", "2"],
            "process 1's --seed is 2, process 0's is 1",
        ),
    ],
    ids=["num-processes", "seed"],
)
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_flax_processes_that_disagree_on_the_world_all_stop_before_the_first_step_naming_it(
    tmp_path, extra0, extra1, named
):
    results = flax_processes(tmp_path, [extra0, extra1], common.free_port(), AGREE_TIMEOUT_S)
    line = f"the processes disagree before the first step: {named}; start every process with the same flags"
    assert_each_one_error_line(results, [line], [line])
    assert not (tmp_path / "flax.safetensors").exists()  # nothing trained, nothing written


@needs_data
@pytest.mark.parametrize(
    "backends, extra1, named",
    [
        (["nnx", "nnx"], ["--seed", "2"], "process 1's --seed is 2, process 0's is 0"),
        (["flax", "nnx"], [], "process 1's --backend is nnx, process 0's is flax"),
    ],
    ids=["nnx-seed", "flax-beside-nnx"],
)
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_nnx_processes_that_disagree_on_the_world_or_twin_all_stop_before_the_first_step_naming_it(
    tmp_path, backends, extra1, named
):
    two = ["--num-processes", "2"]
    results = flax_processes(tmp_path, [two, two + extra1], common.free_port(), AGREE_TIMEOUT_S, backends)
    line = f"the processes disagree before the first step: {named}; start every process with the same flags"
    assert_each_one_error_line(results, [line], [line])
    assert not (tmp_path / "flax.safetensors").exists()  # nothing trained, nothing written


@needs_data
@pytest.mark.slow  # starts Python processes (the fast tier's guard in tests/conftest.py)
def test_torch_ranks_that_disagree_on_the_seed_all_stop_before_the_first_step_naming_it(tmp_path):
    results = torch_ranks(tmp_path, [["--seed", "1"], ["--seed", "2"]], AGREE_TIMEOUT_S)
    line = "the ranks disagree before the first step: rank 1's --seed is 2, rank 0's is 1"
    assert_each_one_error_line(results, [line], [line])
    assert not (tmp_path / "torch.safetensors").exists()


# ----------------------------------------------------------------------------- multi-node on localhost


@needs_data
@pytest.mark.slow  # two torchrun agents and their ranks, plus the one-device run: ~25 s on 2 busy cores
def test_two_torchrun_nodes_of_one_c10d_rendezvous_end_at_the_one_device_weights(tmp_path):
    one = tmp_path / "one.safetensors"
    assert_ok(cli("train", "--backend", "torch", *FLAGS, "--out", one))
    out, endpoint = tmp_path / "two_nodes.safetensors", f"localhost:{common.free_port()}"
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    node += ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "two-nodes"]
    cmd = [*node, "-m", "fashion_twins", "train", "--backend", "torch", *FLAGS, "--out", str(out)]
    results = run_together([(cmd, child_env()), (cmd, child_env())], timeout=300)
    assert [r[0] for r in results] == [0, 0], results[0][2][-2000:] + results[1][2][-2000:]
    assert sum(r[1].count("[torch] wrote") for r in results) == 1  # one node's rank 0 writes
    assert max_weight_diff(weights(out), weights(one)) <= TOL
    assert "x 2 ranks (DDP, gloo)" in (tmp_path / "two_nodes.metrics.json").read_text()


@pytest.mark.slow  # two torch ranks, two flax processes, one torchrun with two ranks: ~30 s on 2 busy cores
def test_a_timeout_no_launcher_takes_is_one_line_on_every_rank_and_process_before_any_set_up(tmp_path):
    """1e308 was an OverflowError in DDP's set-up, 1e10 an instant c10d DistNetworkError: now one line, exit 2."""
    said = f"argument --timeout: must be a number of seconds in 1..{common.MAX_TIMEOUT_S}"
    assert_each_one_error_line(torch_ranks(tmp_path, [[], []], 1e10), [said, "got 10000000000.0"], [said])
    port = common.free_port()
    assert_each_one_error_line(flax_processes(tmp_path, [["--num-processes", "2"]] * 2, port, 1e308), [said], [said])
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd = [*launcher, "-m", "fashion_twins", "train", "--backend", "torch", *SHORT, "--timeout", "1e308"]
    ((code, _, err, _),) = run_together([(cmd + ["--out", str(tmp_path / "t.safetensors")], child_env())])
    ours = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code != 0 and len(ours) >= 1 and all(said in line for line in ours), err[-3000:]
    assert "exitcode  : 2" in err  # the root cause torchrun reports: a rank's one-line exit, not a crash
    assert "OverflowError" not in err and "DistNetworkError" not in err
    assert list(tmp_path.iterdir()) == []
