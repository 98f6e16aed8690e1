"""Kill a short training run at every durability point of its writes, resume it each time, compare with the whole run.

    python tests/crash_driver.py BACKEND WORKDIR EPOCHS   ->  one JSON line on stdout

Run by tests/test_crash.py in a fresh process. This parent imports the twin but computes nothing
with it; each run is a forked child (forking before any torch or XLA thread pool exists is safe),
so the SIGKILL sent at a durability point (fashion_common.checkpoint.FAULT_HOOK: before each fsync
of a temp, each rename, each fsync of the folder) ends that child only, as a crash or power cut would
end the trainer. After each kill a second child resumes from what is on disk (or starts afresh if
no complete sidecar was ever written) and trains to the end; its weights must equal, bit for bit,
those of the run that was never interrupted.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import traceback
from pathlib import Path

import numpy as np
import safetensors.numpy

from fashion_common import checkpoint as canonical
from fashion_common.config import TrainConfig
from fashion_common.data import load_fashion_mnist


def _config(epochs: int) -> TrainConfig:
    # 4 steps an epoch: enough for the optimizer state to matter, short enough for ~40 runs.
    return TrainConfig(
        epochs=epochs, batch_size=32, optimizer="adamw", lr=2e-3, limit_train=128, limit_test=64, device="cpu"
    )


def _in_child(fn, *args) -> tuple[str, int]:
    """Run fn(*args) in a forked child; returns ("exit", code) or ("signal", number)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn(*args)
        except BaseException:
            traceback.print_exc()
            code = 3
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return "signal", os.WTERMSIG(status)
    return "exit", os.WEXITSTATUS(status)


def _train(train, config, data, folder: Path, resume: bool, kill_at: int | None, events: list | None = None):
    """One run into folder/m.safetensors; with kill_at, SIGKILL at that durability point (1-based)."""
    seen = []

    def hook(event, path):
        seen.append((event, Path(path).name))
        if events is not None:
            events.append(f"{event} {Path(path).name}")
        if kill_at is not None and len(seen) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    canonical.FAULT_HOOK = hook
    out = folder / "m.safetensors"
    train.train_and_evaluate(
        config,
        data,
        out=out,
        metrics_path=folder / "m.metrics.json",
        resume=out if resume else None,
        quiet=True,
        log=lambda line: None,
    )
    if events is not None:
        (folder / "events.json").write_text(json.dumps(events))


def main() -> int:
    backend, work, epochs = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    train = importlib.import_module(f"fashion_{backend}.train")
    if backend == "flax":  # each child would compile the same steps again: they share one on-disk cache instead
        import jax

        jax.config.update("jax_compilation_cache_dir", str(work / "jax-cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    data, config = load_fashion_mnist(), _config(epochs)

    reference = work / "reference"
    reference.mkdir(parents=True)
    assert _in_child(_train, train, config, data, reference, False, None, []) == ("exit", 0)
    events = json.loads((reference / "events.json").read_text())
    want = safetensors.numpy.load_file(str(reference / "m.safetensors"))

    trials = []
    for n in range(1, len(events) + 1):
        folder = work / f"kill{n:02d}"
        folder.mkdir()
        killed = _in_child(_train, train, config, data, folder, False, n)
        side = canonical.train_state_path(folder / "m.safetensors")
        resumed = side.exists()
        epoch_on_disk = canonical.read_train_state(folder / "m.safetensors")[1]["epoch"] if resumed else 0
        finished = _in_child(_train, train, config, data, folder, resumed, None)
        got = safetensors.numpy.load_file(str(folder / "m.safetensors")) if finished == ("exit", 0) else {}
        equal = bool(got) and set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)
        trials.append(
            {
                "kill_at": events[n - 1],
                "killed": list(killed),
                "epoch_on_disk": epoch_on_disk,
                "resumed": resumed,
                "finished": list(finished),
                "equal": equal,
            }
        )
    print(json.dumps({"points": len(events), "events": events, "trials": trials}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
