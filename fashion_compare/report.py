"""The comparison report: both twins built from one seed, put side by side, trained, and written to a folder.

Six stages; after each one report.json and report.md are rewritten (atomically), so a crash late
keeps everything measured before it:

  1 data         load Fashion-MNIST
  2 structures   both twins' summaries and the parameter table
  3 parity       one set of weights in both twins: max |diff| of every layer, the loss and every gradient
  4 activations  the tutorial's activations on awkward inputs (inf, NaN, signed zero, saturation)
  5 lockstep     both twins trained step by step from one init on one batch order (the tutorial's SGD)
  6 training     the accuracy recipe in both twins; with full=True also the tutorial's recipe

Outputs in the folder: report.md, report.json, lockstep.png, curves.png, epoch_times.png.
scripts/compare.py is the command line; tests/test_compare.py runs the same function.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from fashion_common.checkpoint import atomic_write_bytes
from fashion_common.config import DEVICES, TrainConfig, tutorial_config
from fashion_common.data import FashionData, load_fashion_mnist, scale_images
from fashion_common.loop import write_json_atomic
from fashion_compare import device_label, set_matmul_precision
from fashion_common.spec import ACTIVATION_DISPLAY, DEFAULT_SPEC, checkpoint_keys, flax_param_path

STAGES = ("data", "structures", "parity", "activations", "lockstep", "training")
BACKENDS = ("torch", "flax")
PLOTS = {  # file -> what it shows, also the alt text in report.md
    "lockstep.png": "lockstep: |loss diff| per step and max weight diff",
    "curves.png": "train loss and test accuracy per epoch, both twins",
    "epoch_times.png": "seconds per epoch, both twins",
}

RECIPE_NAMES = {"recipe": "accuracy recipe", "tutorial": "tutorial recipe"}
QUICK_LOCKSTEP_STEPS = 300  # quick mode on a CPU: ~1/3 of an epoch, the steps tests/test_train.py checks
PARITY_TOL = 1e-5  # at "highest": fp32 rounding of differently ordered sums (tests/test_parity.py measures <= 6e-7)
LOCKSTEP_TOL = 1e-5  # per-step loss and weights, fp32 in both twins (tests/test_train.py; a full epoch measured ~4e-6)
ACCURACY_CLAIM_PP = 0.5  # the issue's claim: with the Adam recipe the twins' final test accuracies agree within 0.5 pp
LOG_FLOOR = 1e-12  # exact zeros cannot be drawn on a log axis; they are drawn at this floor instead


@dataclasses.dataclass
class CompareOptions:
    """What the report runs. The defaults are quick mode: a few minutes on a 2-core CPU."""

    out_dir: str = "report"  # folder for report.md, report.json and the PNGs; created if missing
    full: bool = False  # the 20-epoch recipe, the tutorial's recipe too, and a full lockstep epoch
    device: str = "auto"  # "auto" (a GPU if torch and JAX both see one), "cpu" or "gpu"
    seed: int = 0  # one seed for the init, the batch order and both trainings
    quick_epochs: int = 3  # recipe epochs in quick mode; the cosine schedule then spans these epochs
    tutorial_epochs: int = 10  # tutorial-recipe epochs with full=True, as in the tutorial
    lockstep_steps: Optional[int] = None  # None: 300 in quick mode on a CPU, one full epoch with full=True or on a GPU
    parity_images: int = 64  # real test images in the parity batch
    limit_train: Optional[int] = None  # use only the first N training images (tests, dry runs)
    limit_test: Optional[int] = None  # use only the first N test images
    data_dir: Optional[str] = None  # see fashion_common.data for where the data is looked for
    download: bool = False  # fall back to torchvision's download
    quiet: Optional[bool] = None  # no progress bars; None: bars only when stderr is a terminal
    command: Optional[str] = None  # the command line the header states; None: this library call

    def check(self) -> None:
        """Refuse values that cannot run, before any data is loaded."""
        checks = [
            (self.device in DEVICES, f"device must be one of {', '.join(DEVICES)}, got {self.device!r}"),
            (self.quick_epochs >= 1, "quick_epochs must be >= 1"),
            (self.tutorial_epochs >= 1, "tutorial_epochs must be >= 1"),
            (self.lockstep_steps is None or self.lockstep_steps >= 1, "lockstep_steps must be >= 1"),
            (self.parity_images >= 1, "parity_images must be >= 1"),
            (self.limit_train is None or self.limit_train >= 1, "limit_train must be >= 1"),
            (self.limit_test is None or self.limit_test >= 1, "limit_test must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the run


def build_report(options: Optional[CompareOptions] = None, data: Optional[FashionData] = None, log: Callable[[str], None] = _stderr) -> dict:
    """Run the six stages and write the report folder; report.json and report.md are rewritten after each stage.

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
    run = _Run(options, out_dir, device, data, log)
    run.all()
    return run.report


def _prepare_out_dir(path) -> Path:
    """Create the output folder if needed; fail now, not after training, if it cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"--out-dir {path} is a file; give a folder")
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"--out-dir {path} is not writable")
    return path


class _Run:
    """One report run: the stages share the data, the device, the torch init and the report dict."""

    def __init__(self, options: CompareOptions, out_dir: Path, device: str, data: Optional[FashionData], log):
        self.options, self.out_dir, self.device, self.data, self.log = options, out_dir, device, data, log
        self.quiet = (not sys.stderr.isatty()) if options.quiet is None else options.quiet
        self.spec = DEFAULT_SPEC
        self.init_state_dict = None  # the torch twin's seeded init, canonical layout; both twins load it for parity
        self.report = {
            "meta": _meta(options, device),
            "status": {"state": "running", "stages_done": []},
            "timings": {},
            "plots": [],  # PNGs written so far; report.md links only these, never a stale file from an earlier run
        }

    def all(self) -> None:
        for number, name in enumerate(STAGES, 1):
            self.log(f"[compare] {number}/{len(STAGES)} {name} {STAGE_LINES[name](self)} ...")
            start = time.perf_counter()
            try:
                getattr(self, "stage_" + name)()
            except BaseException as e:  # keep what earlier stages measured, and say where it stopped
                reason = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
                self.report["status"]["state"] = f"failed in stage {number}/{len(STAGES)} {name} ({reason})"
                self.save()
                raise
            self.report["timings"][name + "_seconds"] = time.perf_counter() - start
            self.report["status"]["stages_done"].append(name)
            self.save()
        self.report["status"]["state"] = "complete"
        self.report["timings"]["total_seconds"] = sum(v for k, v in self.report["timings"].items() if k != "total_seconds")
        self.save()

    def save(self) -> None:
        """report.json, then report.md, each written atomically."""
        write_json_atomic(self.out_dir / "report.json", _jsonable(self.report))
        atomic_write_bytes(self.out_dir / "report.md", render_markdown(self.report).encode())

    # ------------------------------------------------------------------------- 1 data

    def stage_data(self) -> None:
        if self.data is None:
            self.data = load_fashion_mnist(self.options.data_dir, download=self.options.download)
        limited = self.data.limit(self.options.limit_train, self.options.limit_test)
        if self.options.parity_images > len(limited.test_labels):
            raise ValueError(f"parity_images {self.options.parity_images} is more than the {len(limited.test_labels)} test images")
        self.report["data"] = {
            "source": self.data.source,
            "num_train": int(len(limited.train_labels)),
            "num_test": int(len(limited.test_labels)),
            "limit_train": self.options.limit_train,
            "limit_test": self.options.limit_test,
        }

    # ------------------------------------------------------------------------- 2 structures

    def stage_structures(self) -> None:
        import fashion_flax
        import fashion_torch

        seed = self.options.seed
        t_model = fashion_torch.create_model(self.spec, seed, fashion_torch.resolve_device(self.device))
        f_model, f_params = fashion_flax.create_model(self.spec, seed, fashion_flax.resolve_device(self.device))
        self.init_state_dict = fashion_torch.to_state_dict(t_model)
        t_shapes = {k: tuple(v.shape) for k, v in t_model.state_dict().items()}
        rows = []
        for key in checkpoint_keys(self.spec):
            path = flax_param_path(key)
            leaf = f_params["params"]
            for part in path:
                leaf = leaf[part]
            f_shape = tuple(leaf.shape)
            expected_flax = t_shapes[key][::-1]  # kernel is the transposed weight; a bias reverses to itself
            rows.append({
                "name": key,
                "torch_shape": list(t_shapes[key]),
                "flax_path": "/".join(path),
                "flax_shape": list(f_shape),
                "count": int(np.prod(t_shapes[key])),
                "shapes_match": f_shape == expected_flax,
            })
        self.report["structures"] = {
            "seed": seed,
            "torch_summary": fashion_torch.summary(t_model),
            "flax_summary": fashion_flax.summary(f_model, f_params),
            "layer_names": _layer_names(self.spec),
        }
        self.report["parameters"] = {
            "rows": rows,
            "total": sum(r["count"] for r in rows),
            "torch_total": fashion_torch.count_parameters(t_model),
            "flax_total": fashion_flax.count_parameters(f_params),
            "spec_total": self.spec.num_parameters(),
        }

    # ------------------------------------------------------------------------- 3 parity

    def stage_parity(self) -> None:
        n = self.options.parity_images
        x = scale_images(self.data.test_images[:n])  # (n, 28, 28) float32 in [0, 1]
        y = self.data.test_labels[:n]  # (n,) int32
        results = {p: self.parity_off_kink(x, y, p) for p in ("highest", "tf32")}
        set_matmul_precision("highest")  # what the rest of the run uses
        self.report["parity"] = {
            "images": n,
            "weights": f"the torch twin's seeded init (seed {self.options.seed}), loaded into both twins",
            "note": "CPU has only fp32: tf32 runs the same fp32 matmuls as highest" if self.device == "cpu" else "tf32: TensorFloat-32 matmuls in both twins",
            "tolerance_highest": PARITY_TOL,
            **results,
        }

    def parity_off_kink(self, x: np.ndarray, y: np.ndarray, precision: str) -> dict:
        """parity() on the batch; where an image has a ReLU unit on opposite sides of 0 in the twins, again without it.

        Such a unit (pre-activation 0.0 in one twin, 3e-9 in the other) switches the ReLU derivative, so the
        gradients of that image differ by what flows through the unit: a kink, not a rounding error. The
        forward figures and the gradients of every other image still have to meet the fp32 tolerance.
        """
        from .parity import parity

        result = parity(self.init_state_dict, x, y, precision, self.device, self.spec)
        keep, current = np.arange(len(y)), result
        for _ in range(3):  # a smaller batch may round differently; a kink there is left out too
            if not current["kink_examples"]:
                break
            keep = np.delete(keep, current["kink_examples"])
            current = parity(self.init_state_dict, x[keep], y[keep], precision, self.device, self.spec)
        if current is not result:
            current["images"] = int(len(keep))
            current["dropped"] = sorted(set(range(len(y))) - set(keep.tolist()))
            result["off_kink"] = current
        result["max_grad_checked"] = current["max_grad"]  # the figure held to the tolerance
        return result

    # ------------------------------------------------------------------------- 4 activations

    def stage_activations(self) -> None:
        from .parity import activation_grid

        self.report["activations"] = activation_grid()

    # ------------------------------------------------------------------------- 5 lockstep

    def lockstep_plan(self):
        """(config, steps or None for the whole epoch, weight_every) of the lockstep stage."""
        config = tutorial_config(epochs=1, device=self.device, seed=self.options.seed)
        steps = self.options.lockstep_steps
        if steps is None and not self.options.full and self.device == "cpu":
            steps = QUICK_LOCKSTEP_STEPS
        num_train = len(self.data.train_labels[: self.options.limit_train]) if self.data is not None else 60_000
        epoch_steps = config.steps_per_epoch(num_train)
        total = epoch_steps if steps is None else min(steps, epoch_steps)
        return config, total, max(1, total // 40)  # ~40 weight comparisons, whatever the length

    def stage_lockstep(self) -> None:
        from .lockstep import lockstep

        config, steps, weight_every = self.lockstep_plan()
        data = self.data.limit(self.options.limit_train, self.options.limit_test)
        result = lockstep(data, config, steps=steps, weight_every=weight_every, precision="highest", spec=self.spec, progress=not self.quiet)
        result["requested_steps"] = self.options.lockstep_steps
        result["weight_every"] = weight_every
        result["tolerance"] = LOCKSTEP_TOL
        self.report["lockstep"] = result
        self.write_png("lockstep.png", plot_lockstep(result))

    # ------------------------------------------------------------------------- 6 training

    def stage_training(self) -> None:
        opts = self.options
        limits = {"device": self.device, "seed": opts.seed, "limit_train": opts.limit_train, "limit_test": opts.limit_test}
        recipe = TrainConfig(**limits) if opts.full else TrainConfig(epochs=opts.quick_epochs, **limits)
        # tutorial: None = not run (quick mode), {} = still to come
        training = self.report["training"] = {"precision": "highest", "tutorial": {} if opts.full else None}
        self.train_both("recipe", recipe, training)
        self.write_png("curves.png", plot_curves(training))
        self.write_png("epoch_times.png", plot_epoch_times(training))
        if opts.full:
            self.train_both("tutorial", tutorial_config(epochs=opts.tutorial_epochs, **limits), training)
            self.write_png("curves.png", plot_curves(training))

    def train_both(self, name: str, config: TrainConfig, training: dict) -> None:
        """Train both twins with `config`; the report is saved after each twin, so a crash in flax keeps torch."""
        import importlib

        default_epochs = (TrainConfig() if name == "recipe" else tutorial_config()).epochs
        entry = training[name] = {
            "config": config.to_dict(),
            "default_epochs": default_epochs,
            "shortened": config.epochs < default_epochs,
        }
        for backend in BACKENDS:
            self.log(f"[compare]     {RECIPE_NAMES[name]}, {backend} twin, {_epochs(config.epochs)}")
            train = importlib.import_module(f"fashion_{backend}.train")
            set_matmul_precision("highest")
            start = time.perf_counter()
            _, metrics = train.train_and_evaluate(config, self.data, quiet=self.quiet, log=self.log)
            metrics["wall_seconds"] = time.perf_counter() - start
            entry[backend] = metrics
            self.save()
        final = {b: entry[b]["epochs"][-1]["test_accuracy"] for b in BACKENDS}
        entry["final_test_accuracy"] = final
        entry["accuracy_diff_pp"] = 100 * abs(final["torch"] - final["flax"])
        if name == "recipe":
            entry["claim_pp"] = ACCURACY_CLAIM_PP
            entry["within_claim"] = entry["accuracy_diff_pp"] <= ACCURACY_CLAIM_PP

    def write_png(self, name: str, png: bytes) -> None:
        atomic_write_bytes(self.out_dir / name, png)
        if name not in self.report["plots"]:
            self.report["plots"].append(name)



def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _lockstep_line(run: _Run) -> str:
    _, steps, _ = run.lockstep_plan()
    return f"({steps} SGD steps, batch 64, one init, one batch order)"


def _training_line(run: _Run) -> str:
    epochs = TrainConfig.epochs if run.options.full else run.options.quick_epochs
    tutorial = f"; tutorial recipe, {run.options.tutorial_epochs} epochs" if run.options.full else ""
    return f"(accuracy recipe, {_epochs(epochs)}, both twins{tutorial})"


STAGE_LINES = {  # the stage line's detail, e.g. "[compare] 3/6 parity (64 test images, highest and tf32) ..."
    "data": lambda run: "(Fashion-MNIST)",
    "structures": lambda run: f"(both twins from seed {run.options.seed}, on {run.device})",
    "parity": lambda run: f"({run.options.parity_images} test images, highest and tf32)",
    "activations": lambda run: "(binary_step, sigmoid, tanh, relu, softmax on the grid)",
    "lockstep": _lockstep_line,
    "training": _training_line,
}


# ----------------------------------------------------------------------------- header facts


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



def _versions() -> Dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "jax", "jaxlib", "flax", "optax", "numpy", "matplotlib"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def _layer_names(spec) -> Dict[str, str]:
    """Stack position -> what sits there: {"flatten": "Flatten", "0": "Linear(784, 512)", "1": "ReLU", ...}."""
    names = {"flatten": "Flatten"}
    sizes = dict(zip(spec.linear_indices, spec.layer_sizes))
    for i in range(spec.stack_length):
        names[str(i)] = f"Linear({sizes[i][0]}, {sizes[i][1]})" if i in sizes else ACTIVATION_DISPLAY[spec.activation_at(i)]
    return names


def _jsonable(obj):
    """Strict JSON: numpy scalars become Python numbers; NaN and +-inf become the strings "nan", "inf", "-inf"."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
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


# ----------------------------------------------------------------------------- plots (matplotlib, Agg canvas, no pyplot state)

TWIN_STYLE = {  # the twins overlap almost exactly, so torch is drawn wide and flax narrow on top of it
    "torch": {"color": "tab:red", "marker": "o", "linewidth": 3.0, "markersize": 8, "alpha": 0.55},
    "flax": {"color": "tab:blue", "marker": "x", "linewidth": 1.3, "markersize": 7},
}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def plot_lockstep(result: dict) -> bytes:
    """Two log-scale panels: |loss diff| at every step, the max weight diff at the recorded steps."""
    from matplotlib.ticker import MaxNLocator

    loss_diff = np.asarray(result["loss_diff"], dtype=np.float64)
    steps = np.arange(1, len(loss_diff) + 1)
    w_steps = np.asarray(result["weight_steps"])
    w_diff = np.asarray(result["weight_diff"], dtype=np.float64)
    fig = _figure(9, 6.5)
    ax_loss, ax_w = fig.subplots(2, 1, sharex=True)
    zeros = int((loss_diff == 0).sum())
    ax_loss.plot(steps, np.maximum(loss_diff, LOG_FLOOR), color="tab:purple", linewidth=0.9, marker="." if len(steps) <= 100 else None, label="|loss torch - loss flax|")
    ax_loss.set_title(f"per-step |loss diff| ({zeros} of {len(steps)} steps exactly 0, drawn at {LOG_FLOOR:g})", fontsize=10)
    ax_loss.set_ylabel("|loss diff|")
    w_zeros = int((w_diff == 0).sum())
    every = result.get("weight_every", 1)
    ax_w.plot(w_steps, np.maximum(w_diff, LOG_FLOOR), color="tab:green", marker="o", markersize=4, label="max |W torch - W flax|, all tensors")
    when = "after every step" if every == 1 else f"every {every} steps"
    ax_w.set_title(f"max weight diff {when} (step 0 is the shared init; {_count(w_zeros, 'exact zero')} drawn at {LOG_FLOOR:g})", fontsize=10)
    ax_w.set_ylabel("max |weight diff|")
    ax_w.set_xlabel("SGD step")
    ax_w.xaxis.set_major_locator(MaxNLocator(integer=True))
    top = max(float(np.max(loss_diff, initial=0)), float(np.max(w_diff, initial=0)), LOCKSTEP_TOL)
    for ax in (ax_loss, ax_w):
        ax.set_yscale("log")
        ax.set_ylim(LOG_FLOOR / 5, top * 20)
        ax.axhline(LOCKSTEP_TOL, color="gray", linestyle="--", linewidth=1, label=f"tolerance {LOCKSTEP_TOL:g}")
        ax.axhline(LOG_FLOOR, color="lightgray", linestyle=":", linewidth=1, label=f"floor {LOG_FLOOR:g} (= exactly 0)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    cfg = result["config"]
    fig.suptitle(f"Lockstep: torch vs flax, tutorial SGD (lr {cfg['lr']:g}, batch {cfg['batch_size']}), {result['steps']} steps, {result['precision']} precision")
    return _png(fig)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _min_span(ax, span: float) -> None:
    """Widen the y range to at least `span`, so rounding-size differences between the twins are not blown up to full height."""
    low, high = ax.get_ylim()
    if high - low < span:
        mid = (low + high) / 2
        ax.set_ylim(mid - span / 2, mid + span / 2)


def _epoch_axis(ax, epochs) -> None:
    """Integer epoch ticks (all of them up to 20 epochs) and half an epoch of margin, even for a single epoch."""
    from matplotlib.ticker import MaxNLocator

    last = max(epochs)
    if last <= 20:
        ax.set_xticks(range(1, last + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, last + 0.5)
    ax.set_xlabel("epoch")


def _runs(training: dict):
    """(name, label, linestyle) of each recipe present in the training section."""
    out = [("recipe", "accuracy recipe", "-")]
    if "final_test_accuracy" in (training.get("tutorial") or {}):
        out.append(("tutorial", "tutorial recipe", "--"))
    return out


def plot_curves(training: dict) -> bytes:
    """Train loss and test accuracy per epoch, both twins overlaid (and the tutorial recipe, dashed, when run)."""
    fig = _figure(11, 4.6)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for name, label, linestyle in _runs(training):
        for backend in BACKENDS:
            hist = training[name][backend]["epochs"]
            epochs = [r["epoch"] for r in hist]
            style = {**TWIN_STYLE[backend], "linestyle": linestyle}
            ax_loss.plot(epochs, [r["train_loss"] for r in hist], label=f"{backend}, {label}", **style)
            ax_acc.plot(epochs, [100 * r["test_accuracy"] for r in hist], label=f"{backend}, {label}", **style)
    ax_loss.set_title("train loss (mean over the epoch's steps)", fontsize=10)
    ax_loss.set_ylabel("cross-entropy")
    ax_acc.set_title("test accuracy (after each epoch)", fontsize=10)
    ax_acc.set_ylabel("test accuracy (%)")
    all_epochs = [r["epoch"] for name, _, _ in _runs(training) for r in training[name]["torch"]["epochs"]]
    for ax in (ax_loss, ax_acc):
        _epoch_axis(ax, all_epochs)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    _min_span(ax_loss, 0.05)  # cross-entropy units
    _min_span(ax_acc, 2.0)  # percentage points
    recipe = training["recipe"]
    cfg = recipe["config"]
    shortened = f", shortened from {recipe['default_epochs']} (cosine over {_epochs(cfg['epochs'])})" if recipe["shortened"] else ""
    title = f"Accuracy recipe ({cfg['optimizer']}, lr {cfg['lr']:g}, {cfg['schedule']}, batch {cfg['batch_size']}): {_epochs(cfg['epochs'])}{shortened}"
    if len(_runs(training)) > 1:
        tut = training["tutorial"]["config"]
        title += f"\ndashed: tutorial recipe ({tut['optimizer']}, lr {tut['lr']:g}, {tut['schedule']}, batch {tut['batch_size']}): {_epochs(tut['epochs'])}"
    fig.suptitle(title)
    return _png(fig)


def plot_epoch_times(training: dict) -> bytes:
    """Seconds per epoch of the accuracy recipe, one pair of bars per epoch."""
    fig = _figure(max(6.5, 0.55 * len(training["recipe"]["torch"]["epochs"]) + 3), 4.6)
    ax = fig.subplots()
    hist = {b: training["recipe"][b]["epochs"] for b in BACKENDS}
    epochs = np.array([r["epoch"] for r in hist["torch"]])
    width = 0.38
    for offset, backend in zip((-width / 2, width / 2), BACKENDS):
        seconds = [r["epoch_seconds"] for r in hist[backend]]
        bars = ax.bar(epochs + offset, seconds, width, color=TWIN_STYLE[backend]["color"], label=f"{backend} (median {np.median(seconds):.2f} s)")
        if len(epochs) <= 6:
            ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    _epoch_axis(ax, epochs.tolist())
    ax.set_ylabel("training seconds (evaluation excluded)")
    ax.set_ylim(0, max(r["epoch_seconds"] for b in BACKENDS for r in hist[b]) * 1.15)
    ax.grid(True, axis="y", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2, fontsize=9)  # below the axes: never over a bar or its label
    cfg = training["recipe"]["config"]
    ax.set_title(f"Accuracy recipe: seconds per epoch (batch {cfg['batch_size']}, {_epochs(len(epochs))})\nepoch 1 includes warm-up and flax's JIT compilation", fontsize=10)
    return _png(fig)


# ----------------------------------------------------------------------------- report.md


def _e(x) -> str:
    """A max |diff| for a table: 0 stays 0, anything else in 2-digit scientific notation."""
    x = float(x)
    return "0" if x == 0 else ("inf" if math.isinf(x) else ("nan" if math.isnan(x) else f"{x:.2e}"))


def _g(x) -> str:
    """An activation value as it is: -0, inf, nan and 1e-07 all visible."""
    return f"{float(x):.6g}"


def _ok(flag: bool) -> str:
    return "yes" if flag else "**NO**"


def render_markdown(report: dict) -> str:
    """report.md from the report dict; sections of stages not yet run are left out, PNGs linked only once written."""
    meta = report["meta"]
    have_png = lambda name: name in report.get("plots", ())
    lines: List[str] = ["# fashion-twins: the torch twin and the flax twin, side by side", ""]
    mode = meta["mode"]
    mode_text = "quick (recipe shortened; tutorial recipe only with --full)" if mode == "quick" else "full (20-epoch recipe and the tutorial recipe)"
    lines += [
        f"- **date**: {meta['date']}",
        f"- **mode**: {mode_text}",
        f"- **device**: {meta['device']} — {meta['device_name']}",
        "- **versions**: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- **platform**: {meta['platform']}",
        f"- **command**: `{meta['command']}`",
        f"- **seed**: {meta['options']['seed']}",
        f"- **status**: {report['status']['state']}" + ("" if report["status"]["state"] == "complete" else f" (stages done: {', '.join(report['status']['stages_done']) or 'none'})"),
        "",
    ]
    lines += _md_summary(report)
    if "structures" in report:
        lines += _md_structures(report)
    if "parity" in report:
        lines += _md_parity(report)
    if "activations" in report:
        lines += _md_activations(report["activations"])
    if "lockstep" in report:
        lines += _md_lockstep(report["lockstep"], have_png)
    if "training" in report:
        lines += _md_training(report["training"], have_png)
    if report.get("timings"):
        lines += ["## Timings", "", "| stage | seconds |", "| --- | ---: |"]
        lines += [f"| {k.removesuffix('_seconds')} | {v:.1f} |" for k, v in report["timings"].items()]
        lines.append("")
    return "\n".join(lines)


def _md_summary(report: dict) -> List[str]:
    rows = []
    if "parameters" in report:
        p = report["parameters"]
        same = p["torch_total"] == p["flax_total"] == p["spec_total"]
        rows.append(f"| parameters (torch / flax) | {p['torch_total']:,} / {p['flax_total']:,} | equal: {_ok(same)} |")
    if "parity" in report:
        h = report["parity"]["highest"]
        forward = max(h["logits"], h["loss"], h["max_layer"])
        rows.append(f"| parity at highest, worst max \\|diff\\| of logits, layers, loss | {_e(forward)} | ≤ {PARITY_TOL:g}: {_ok(forward <= PARITY_TOL)} |")
        if h.get("off_kink"):
            off = h["off_kink"]
            rows.append(
                f"| parity at highest, worst gradient max \\|diff\\| | {_e(h['max_grad'])} on all {report['parity']['images']} images; "
                f"{_e(off['max_grad'])} without the {len(off['dropped'])} at a ReLU kink (§3) | ≤ {PARITY_TOL:g} without them: {_ok(off['max_grad'] <= PARITY_TOL)} |"
            )
        else:
            rows.append(f"| parity at highest, worst gradient max \\|diff\\| | {_e(h['max_grad'])} | ≤ {PARITY_TOL:g}: {_ok(h['max_grad'] <= PARITY_TOL)} |")
    if "activations" in report:
        fns = report["activations"]["functions"]
        worst_v = max(f["value_diff"] for f in fns.values())
        worst_g = max(f["grad_diff"] for f in fns.values())
        rows.append(f"| activation grid, worst value / grad diff | {_e(worst_v)} / {_e(worst_g)} | ≤ {PARITY_TOL:g}: {_ok(max(worst_v, worst_g) <= PARITY_TOL)} |")
    if "lockstep" in report:
        ls = report["lockstep"]
        worst = max(ls["max_loss_diff"], ls["final_weight_diff"])
        rows.append(f"| lockstep ({ls['steps']} steps), max loss diff / final weight diff | {_e(ls['max_loss_diff'])} / {_e(ls['final_weight_diff'])} | ≤ {LOCKSTEP_TOL:g}: {_ok(worst <= LOCKSTEP_TOL)} |")
    training = report.get("training") or {}
    recipe = training.get("recipe") or {}
    if "final_test_accuracy" in recipe:
        acc = recipe["final_test_accuracy"]
        note = f" ({recipe['config']['epochs']} of {recipe['default_epochs']} epochs)" if recipe["shortened"] else ""
        rows.append(
            f"| accuracy recipe{note}: final test accuracy torch / flax | {100 * acc['torch']:.2f}% / {100 * acc['flax']:.2f}% "
            f"| \\|Δ\\| = {recipe['accuracy_diff_pp']:.2f} pp, claim ≤ {ACCURACY_CLAIM_PP} pp: {_ok(recipe['within_claim'])} |"
        )
    tutorial = training.get("tutorial") or {}
    if "final_test_accuracy" in tutorial:
        acc = tutorial["final_test_accuracy"]
        rows.append(f"| tutorial recipe ({tutorial['config']['epochs']} epochs): final test accuracy torch / flax | {100 * acc['torch']:.2f}% / {100 * acc['flax']:.2f}% | \\|Δ\\| = {tutorial['accuracy_diff_pp']:.2f} pp |")
    if not rows:
        return []
    return ["## Summary", "", "| figure | value | check |", "| --- | --- | --- |", *rows, ""]


def _md_structures(report: dict) -> List[str]:
    s, p = report["structures"], report["parameters"]
    lines = [
        "## 1. Structures",
        "",
        f"Both twins built from seed {s['seed']}. `fashion_torch.summary(model)`:",
        "",
        "```text",
        s["torch_summary"],
        "```",
        "",
        "`fashion_flax.summary(model, params)`:",
        "",
        "```text",
        s["flax_summary"],
        "```",
        "",
        "## 2. Parameters",
        "",
        "The flax kernel is the transposed torch weight ([in, out] instead of [out, in]); "
        "flax paths are inside the `params` collection (`fashion_common.spec.flax_param_path`).",
        "",
        "| torch name | torch shape | flax path | flax shape | count |",
        "| --- | --- | --- | --- | ---: |",
    ]
    for r in p["rows"]:
        flag = "" if r["shapes_match"] else " **(shape mismatch)**"
        lines.append(f"| `{r['name']}` | {tuple(r['torch_shape'])} | `{r['flax_path']}` | {tuple(r['flax_shape'])}{flag} | {r['count']:,} |")
    lines += [
        f"| **total** | | | | **{p['total']:,}** |",
        "",
        f"Counted by each twin: torch {p['torch_total']:,}, flax {p['flax_total']:,}; "
        f"the spec's formula (784+1)·512 + (512+1)·512 + (512+1)·10 = {p['spec_total']:,}.",
        "",
    ]
    return lines


def _md_parity(report: dict) -> List[str]:
    par = report["parity"]
    names = report.get("structures", {}).get("layer_names", {})
    columns = [("highest", par["highest"]), ("tf32", par["tf32"])]
    for p in ("highest", "tf32"):
        off = par[p].get("off_kink")
        if off:
            columns.append((f"{p}, {off['images']} images", off))
    lines = [
        "## 3. Parity",
        "",
        f"The same weights — {par['weights']} — and the same {par['images']} real test images (scaled /255, with their labels) "
        "in both twins; every figure is max |torch − flax| (the loss: |torch − flax|). Gradients are of the mean "
        "cross-entropy, the parameter gradients compared in the torch layout.",
        "",
        f"**Precision:** {par['note']}.",
        f"At highest the expected size is fp32 rounding of differently ordered sums (≤ ~1e-6); stated tolerance {PARITY_TOL:g}.",
        "",
        "| figure | " + " | ".join(c for c, _ in columns) + " |",
        "| --- |" + " ---: |" * len(columns),
    ]
    row = lambda label, get: lines.append(f"| {label} | " + " | ".join(_e(get(r)) for _, r in columns) + " |")
    row("logits", lambda r: r["logits"])
    row("loss", lambda r: r["loss"])
    for k in par["highest"]["layers"]:
        row(f"layer `{k}` ({names[k]})" if k in names else f"layer `{k}`", lambda r, k=k: r["layers"][k])
    for k in par["highest"]["grads"]:
        row("grad w.r.t. input" if k == "input" else f"grad `{k}`", lambda r, k=k: r["grads"][k])
    lines.append("| **max over layers / grads** | " + " | ".join(f"{_e(r['max_layer'])} / {_e(r['max_grad'])}" for _, r in columns) + " |")
    lines.append("")
    kinked = [p for p in ("highest", "tf32") if par[p].get("off_kink")]
    if kinked:
        dropped = sorted({i for p in kinked for i in par[p]["off_kink"]["dropped"]})
        lines += [
            f"**ReLU kink ({' and '.join(kinked)}):** {_count(len(dropped), 'test image')} of the batch (index {', '.join(map(str, dropped))}) "
            f"{'has' if len(dropped) == 1 else 'have'} a hidden pre-activation that is > 0 in one twin and not in the other (e.g. exactly 0.0 in torch, ~1e-9 in flax). "
            "ReLU's derivative jumps there (0 at 0, 1 above), so that image's gradients differ by what flows through the unit, "
            "not by rounding; both twins are right. The columns marked with fewer images repeat the comparison without them; "
            f"at highest, that is the gradient figure held to {PARITY_TOL:g}.",
            "",
        ]
    return lines


def _md_activations(grid: dict) -> List[str]:
    fns = grid["functions"]
    inputs = grid["inputs"]
    header = "| x | " + " | ".join(f"{name} torch | {name} flax" for name in fns) + " |"
    lines = [
        "## 4. Activation grid",
        "",
        "Each of the tutorial's activations on inputs where naive code breaks (±inf, NaN, ±0, ±1e-7, saturation at ±20 and ±1e4). "
        "Softmax runs over the finite inputs only, as one vector (an inf or NaN would make the whole vector NaN by definition); "
        "— marks the inputs it skips.",
        "",
        header,
        "| " + " | ".join(["---:"] * (1 + 2 * len(fns))) + " |",
    ]
    # position of each grid input inside each function's own x list (softmax skips the non-finite ones)
    finite_pos = {}
    for name, f in fns.items():
        if len(f["x"]) == len(inputs):
            finite_pos[name] = list(range(len(inputs)))
        else:
            pos, k = [], 0
            for x in inputs:
                if math.isfinite(float(x)):
                    pos.append(k)
                    k += 1
                else:
                    pos.append(None)
            finite_pos[name] = pos
    for i, x in enumerate(inputs):
        cells = [_g(x)]
        for name, f in fns.items():
            j = finite_pos[name][i]
            cells += ["—", "—"] if j is None else [_g(f["torch"][j]), _g(f["flax"][j])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Max |torch − flax| over the grid (NaN must sit in the same places; a NaN in one twin only counts as inf). "
        "The gradient is of sum(y · w) with fixed weights w in [−1, 1], so softmax's gradient is not identically 0. "
        "Values are printed as they come, signed zeros included (−0 and 0 are equal as numbers, so they count as no difference).",
        "",
        "| activation | max value diff | max gradient diff |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {_e(f['value_diff'])} | {_e(f['grad_diff'])} |" for name, f in fns.items()]
    lines.append("")
    return lines


def _md_lockstep(ls: dict, have_png) -> List[str]:
    cfg = ls["config"]
    lines = [
        "## 5. Lockstep",
        "",
        f"Both twins start from the torch twin's init (seed {cfg['seed']}) and take the same {ls['steps']} steps on the same batches "
        f"(the tutorial's plain SGD, lr {cfg['lr']:g}, batch {cfg['batch_size']}), at {ls['precision']} precision. "
        "The loss is compared at every step, every weight " + ("at every step." if ls["weight_every"] == 1 else f"every {ls['weight_every']} steps and at the last."),
        "",
        "| figure | value |",
        "| --- | ---: |",
        f"| steps | {ls['steps']} |",
        f"| max \\|loss diff\\| over the steps | {_e(ls['max_loss_diff'])} |",
        f"| final max \\|weight diff\\| | {_e(ls['final_weight_diff'])} |",
        f"| loss, first → last step (torch) | {ls['loss_torch'][0]:.4f} → {ls['loss_torch'][-1]:.4f} |",
        f"| loss, first → last step (flax) | {ls['loss_flax'][0]:.4f} → {ls['loss_flax'][-1]:.4f} |",
        f"| seconds | {ls['seconds']:.1f} |",
        "",
        f"Tolerance {LOCKSTEP_TOL:g}: fp32 rounding of differently ordered sums, ~1e-7 relative per op, is all that may separate them. "
        f"On the log plot, exact zeros are drawn at {LOG_FLOOR:g}.",
        "",
    ]
    if have_png("lockstep.png"):
        lines += [f"![{PLOTS['lockstep.png']}](lockstep.png)", ""]
    return lines


def _md_history(entry: dict) -> List[str]:
    t, f = entry["torch"]["epochs"], entry["flax"]["epochs"]
    lines = [
        "| epoch | train loss torch | train loss flax | test loss torch | test loss flax | test acc torch | test acc flax | Δ pp | s torch | s flax |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for a, b in zip(t, f):
        lines.append(
            f"| {a['epoch']} | {a['train_loss']:.4f} | {b['train_loss']:.4f} | {a['test_loss']:.4f} | {b['test_loss']:.4f} | "
            f"{100 * a['test_accuracy']:.2f}% | {100 * b['test_accuracy']:.2f}% | {100 * abs(a['test_accuracy'] - b['test_accuracy']):.2f} | "
            f"{a['epoch_seconds']:.2f} | {b['epoch_seconds']:.2f} |"
        )
    return lines + [""]


def _md_training(training: dict, have_png) -> List[str]:
    lines = ["## 6. Training", ""]
    recipe = training.get("recipe") or {}
    if "config" in recipe:
        cfg = recipe["config"]
        lines += [
            f"**Accuracy recipe** (`fashion_common.config.TrainConfig()`): {cfg['optimizer']}, lr {cfg['lr']:g}, {cfg['schedule']} schedule, "
            f"weight decay {cfg['weight_decay']:g}, batch {cfg['batch_size']}, label smoothing {cfg['label_smoothing']:g}, seed {cfg['seed']}, "
            f"{_epochs(cfg['epochs'])}; matmul precision {training['precision']} in both twins. "
            "Each twin initializes itself from the seed, with the same law (torch's U(±1/√fan_in)) but its own generator "
            "(torch's vs a JAX key), so these are two independent runs: their difference is run-to-run noise, "
            "which is what the issue's claim bounds. The identical-init comparison is the lockstep above.",
            "",
        ]
        if recipe["shortened"]:
            lines += [
                f"> **Shortened:** quick mode trains {_epochs(cfg['epochs'])} instead of the recipe's {recipe['default_epochs']}; "
                f"everything else is the recipe, and the cosine schedule then decays to 0 over these {_epochs(cfg['epochs'])}. "
                f"Run with `--full` for the real recipe.",
                "",
            ]
        if "final_test_accuracy" in recipe:
            acc = recipe["final_test_accuracy"]
            lines += [
                f"Final test accuracy: torch **{100 * acc['torch']:.2f}%**, flax **{100 * acc['flax']:.2f}%**; "
                f"difference **{recipe['accuracy_diff_pp']:.2f} pp** (the issue's claim for the Adam recipe: ≤ {ACCURACY_CLAIM_PP} pp: {_ok(recipe['within_claim'])}).",
                "",
                *_md_history(recipe),
            ]
        elif "torch" in recipe:
            lines += ["(flax twin still training)", ""]
        if have_png("curves.png"):
            lines += [f"![{PLOTS['curves.png']}](curves.png)", ""]
        if have_png("epoch_times.png"):
            lines += [
                "Epoch seconds are training only (the evaluation after each epoch is excluded); epoch 1 includes warm-up and flax's JIT compilation.",
                "",
                f"![{PLOTS['epoch_times.png']}](epoch_times.png)",
                "",
            ]
    tutorial = training.get("tutorial")
    lines += ["### Tutorial recipe", ""]
    if tutorial is None:
        lines += ["Not run in quick mode: `--full` trains the tutorial's own recipe (plain SGD, lr 1e-3, batch 64, 10 epochs) in both twins for comparison.", ""]
    elif "final_test_accuracy" in tutorial:
        cfg, acc = tutorial["config"], tutorial["final_test_accuracy"]
        lines += [
            f"`fashion_common.config.tutorial_config()`: {cfg['optimizer']}, lr {cfg['lr']:g}, {cfg['schedule']}, batch {cfg['batch_size']}, {cfg['epochs']} epochs. "
            f"Final test accuracy: torch {100 * acc['torch']:.2f}%, flax {100 * acc['flax']:.2f}% (difference {tutorial['accuracy_diff_pp']:.2f} pp); "
            "dashed in curves.png.",
            "",
            *_md_history(tutorial),
        ]
    else:
        lines += ["(not finished yet)", ""]
    return lines
