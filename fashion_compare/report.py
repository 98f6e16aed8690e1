"""The comparison report: the three twins (torch, flax, nnx) from one seed, side by side, trained, written to a folder.

Seven stages, and an eighth on request (fashion_compare/stages.py); after each one report.json and report.md are
rewritten (atomically), so a crash late keeps everything measured before it:

  1 data         load Fashion-MNIST
  2 structures   every twin's summary and the parameter table
  3 parity       one set of weights in every twin: max |torch − flax| and |torch − nnx| of every layer, loss, gradient
  4 activations  the tutorial's activations on awkward inputs (inf, NaN, signed zero, saturation)
  5 lockstep     torch and flax, then torch and nnx, step by step from one init on one batch order (tutorial SGD)
  6 training     the accuracy recipe in every twin; with full=True also the tutorial's recipe
  7 classes      confusion matrices, per-class accuracy and each pair's agreement on the test set
  8 distributed  only with distributed=N: torch and flax on one device vs N-way data parallel (no NNX data-parallel)

The stages compute every figure and every pass/fail check (report.json "checks": name, value,
tolerance, passed, why); fashion_compare/plots.py draws the PNGs and fashion_compare/render.py
writes report.md from the JSON alone. Outputs: report.md, report.json, the PNGs in plots.PLOTS and each
twin's final checkpoints, <run>-<twin>.safetensors (report.json "checkpoints").
`fashion-twins compare` (fashion_twins/cli/compare.py) is the command line; tests/test_compare.py runs the same
function.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fashion_common.checkpoint import atomic_write_bytes
from fashion_common.config import DEVICES
from fashion_common.data import FashionData
from fashion_common.loop import write_json_atomic
from fashion_common.runtime import machine_state
from fashion_compare import device_label

from . import machine
from .plots import PLOTS  # noqa: F401  (re-exported: the files a report may hold)
from .render import render_markdown
from .stages import QUICK_LOCKSTEP_STEPS, STAGES, Run  # noqa: F401  (QUICK_LOCKSTEP_STEPS: the CLI's help)


@dataclasses.dataclass
class CompareOptions:
    """What the report runs. The defaults are quick mode: a few minutes on a 2-core CPU."""

    out_dir: str = "report"  # folder for report.md, report.json and the PNGs; created if missing
    full: bool = False  # the default recipe's full epochs, the tutorial's recipe too, and a full lockstep epoch
    device: str = "auto"  # "auto" (a GPU if torch and JAX both see one), "cpu" or "gpu"
    seed: int = 0  # one seed for the init, the batch order and both trainings
    # float32 matmuls of the lockstep, training and per-class stages, "highest" or "tf32" (parity runs its own list)
    precision: str = "highest"
    quick_epochs: int = 3  # recipe epochs in quick mode; the cosine schedule then spans these epochs
    tutorial_epochs: int = 10  # tutorial-recipe epochs with full=True, as in the tutorial
    lockstep_steps: int | None = None  # None: 300 in quick mode on a CPU, one full epoch with full=True or on a GPU
    parity_images: int = 64  # real test images in the parity batch
    limit_train: int | None = None  # use only the first N training images (tests, dry runs)
    limit_test: int | None = None  # use only the first N test images
    data_dir: str | None = None  # see fashion_common.data for where the data is looked for
    download: bool = False  # fall back to torchvision's download
    quiet: bool | None = None  # no progress bars; None: bars only when stderr is a terminal
    command: str | None = None  # the command line the header states; None: this library call
    tensorboard: str | None = None  # also write each training's per-epoch scalars to DIR/<recipe>/<twin>/
    distributed: int = 0  # N > 0: also each twin on one device vs N-way data parallel (stage 8); 0 skips it

    def check(self) -> None:
        """Refuse values that cannot run, before any data is loaded."""
        checks = [
            (self.device in DEVICES, f"device must be one of {', '.join(DEVICES)}, got {self.device!r}"),
            (self.precision in ("highest", "tf32"), f"precision must be highest or tf32, got {self.precision!r}"),
            (self.quick_epochs >= 1, "quick_epochs must be >= 1"),
            (self.tutorial_epochs >= 1, "tutorial_epochs must be >= 1"),
            (self.lockstep_steps is None or self.lockstep_steps >= 1, "lockstep_steps must be >= 1"),
            (self.parity_images >= 1, "parity_images must be >= 1"),
            (self.limit_train is None or self.limit_train >= 1, "limit_train must be >= 1"),
            (self.limit_test is None or self.limit_test >= 1, "limit_test must be >= 1"),
            (isinstance(self.distributed, int) and self.distributed >= 0, "distributed must be an int >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.distributed:  # N must split the stage's global batch: refused here, before any data or training
            from fashion_common.distributed import check_world

            from .stages import DISTRIBUTED_BATCH

            check_world(self.distributed, DISTRIBUTED_BATCH, "ranks/devices")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the run


def build_report(
    options: CompareOptions | None = None, data: FashionData | None = None, log: Callable[[str], None] = _stderr
) -> dict:
    """Run the stages and write the report folder; report.json and report.md are rewritten after each stage.

    Args:
      options: what to run (CompareOptions; the defaults are quick mode).
      data: Fashion-MNIST already loaded (tests pass theirs); None loads it as options say.
      log: receives the stage lines and both twins' per-epoch lines (default: stderr).
    Returns:
      the report as written to report.json (non-finite numbers stay floats here).
    """
    options = options or CompareOptions()
    options.check()
    out_dir = _prepare_out_dir(options.out_dir)
    from .benchmark import pick_device

    device = pick_device(options.device)  # "gpu" without one raises DeviceError here, before any work
    report = {
        "meta": _meta(options, device),
        "status": {"state": "running", "stages_done": []},
        "timings": {},
        "checks": [],  # every pass/fail check: {"stage", "name", "value", "tolerance", "passed", "why"}
        "plots": [],  # PNGs written so far; report.md links only these, never a stale file from an earlier run
    }

    def save():
        return _save(out_dir, report)

    run = Run(options, out_dir, device, data, log, report, save)
    stages = [stage for stage in STAGES if stage.enabled(run)]  # distributed: only with --distributed N
    for number, stage in enumerate(stages, 1):
        log(f"[compare] {number}/{len(stages)} {stage.name} {stage.line(run)} ...")
        start, machine_start = time.perf_counter(), machine_state()
        try:
            stage.run(run)
        except BaseException as e:  # keep what earlier stages measured, and say where it stopped
            reason = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
            report["status"]["state"] = f"failed in stage {number}/{len(stages)} {stage.name} ({reason})"
            save()
            raise
        report["timings"][stage.name + "_seconds"] = time.perf_counter() - start
        machine.record_stage(report, stage.name, machine_start)  # load and cores at its start and end
        report["status"]["stages_done"].append(stage.name)
        save()
    report["status"]["state"] = "complete"
    report["timings"]["total_seconds"] = sum(v for k, v in report["timings"].items() if k != "total_seconds")
    save()
    return report


def _prepare_out_dir(path) -> Path:
    """Create the output folder if needed; fail now, not after training, if it cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"--out-dir {path} is a file; give a folder")
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"--out-dir {path} is not writable")
    return path


def _save(out_dir: Path, report: dict) -> None:
    """report.json, then report.md rendered from that same JSON; each written atomically."""
    as_json = jsonable(report)
    write_json_atomic(out_dir / "report.json", as_json)
    atomic_write_bytes(out_dir / "report.md", render_markdown(as_json).encode())


# ----------------------------------------------------------------------------- header facts and JSON


def _meta(options: CompareOptions, device: str) -> dict:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "full" if options.full else "quick",
        "device": device,
        "device_name": device_label(device),
        "platform": platform.platform(),
        "versions": _versions(),
        "command": options.command or f"fashion_compare.report.build_report({options!r})",
        "options": dataclasses.asdict(options),
    }


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "jax", "jaxlib", "flax", "optax", "numpy", "matplotlib"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def jsonable(obj):
    """Strict JSON: numpy scalars become Python numbers; NaN and +-inf become the strings "nan", "inf", "-inf"."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    return obj
