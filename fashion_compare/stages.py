"""The comparison run, stage by stage: every figure and every pass/fail check goes into the report dict here.

Each stage is a small function `stage_x(run)` that reads what earlier stages left on the `Run`
(the data, the torch init, the final train states) and writes its own section of `run.report`,
plus its checks into `run.report["checks"]`. Nothing here formats text: fashion_compare/render.py
turns the dict into report.md, and fashion_compare/plots.py draws the PNGs from the same dict.
To add a stage, write `stage_x(run)` and append a `Stage` to STAGES.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fashion_common.checkpoint import atomic_write_bytes
from fashion_common.config import TrainConfig, tutorial_config
from fashion_common.data import FashionData, load_fashion_mnist, scale_images
from fashion_common.metrics import accuracy, agreement, confusion_matrix, per_class_accuracy
from fashion_common.runtime import machine_state
from fashion_common.spec import (
    ACTIVATION_DISPLAY,
    BACKENDS,
    CLASS_NAMES,
    DEFAULT_SPEC,
    checkpoint_keys,
    flax_param_path,
    nnx_param_path,
)
from fashion_compare import set_matmul_precision

from . import machine, plots

RECIPE_NAMES = {"recipe": "accuracy recipe", "tutorial": "tutorial recipe"}
JAX_TWINS = tuple(b for b in BACKENDS if b != "torch")  # ("flax", "nnx"): each held against torch on torch's weights
PAIRS = tuple((a, b) for i, a in enumerate(BACKENDS) for b in BACKENDS[i + 1 :])  # torch–flax, torch–nnx, flax–nnx
QUICK_LOCKSTEP_STEPS = 300  # quick mode on a CPU: ~1/3 of an epoch, the steps tests/test_train.py checks

# Tolerances of the checks, each with the reason the report states beside it.
PARITY_TOL = 1e-5  # at "highest": fp32 rounding of differently ordered sums (tests/test_parity.py measures <= 6e-7)
LOCKSTEP_TOL = 1e-5  # per-step loss and weights, fp32 in both twins (tests/test_train.py; a full epoch measured ~4e-6)
ACCURACY_TOL_PP = (
    0.5  # independently seeded twins, full training set: run-to-run noise (README: 0.01 pp apart over 3 seeds)
)
LOCKSTEP_DISAGREE_TOL = 0.1  # percent of test images: weights 1e-5 apart flip only a near-tie of the top two logits
DISTRIBUTED_TOL = (
    1e-5  # data parallel vs one device, and torch DDP vs flax sharded (tests/test_distributed.py measures 1e-9..5e-7)
)
DISTRIBUTED_STEPS, DISTRIBUTED_BATCH = (
    100,
    64,
)  # compare --distributed N: 100 plain SGD steps, global batch 64 (N must divide it)
PREDICT_TOL_PP = (
    0.02  # predict_proba's argmax vs the evaluation's argmax: one batch of the same weights; 2 in 10,000 at most
)
WHY = {
    "exact": "both twins build the same layers; a count or shape can only be equal or wrong",
    "parity": 'the same weights and images in both twins at fp32 ("highest"): only the rounding of differently '
    "ordered sums (~1e-7 relative per op) may separate them; a layout or transpose bug moves values by ~1e-2",
    "activations": "the same inputs in both twins at fp32: an elementwise function may differ by its last bit (~1e-7 "
    "relative); NaN must sit in the same places (a NaN in one twin only counts as inf)",
    "lockstep": "the same init and batch order, plain SGD, fp32 in both twins: rounding may accumulate over the steps "
    "(a full epoch measured ~4e-6) but stays far below a wrong gradient or update (~1e-3 after one step)",
    "lockstep_agree": "weights 1e-5 apart move the logits by ~1e-5, so only an image whose two largest logits are "
    "closer than that can change class",
    "accuracy": "each twin draws its own init from the seed (torch's generator vs a JAX key), so the two runs differ "
    "by run-to-run noise; on the full training set the final test accuracies of the recipe stay within this",
    "distributed": "the same init, global batches and plain SGD at fp32: a data-parallel step sums the same products "
    "in another order (per-device partial gradients, then an all-reduce), ~1e-7 per step; a wrong batch slice or a "
    "missing average moves weights by ~1e-3",
    "predict": "predict_proba and the training loop's evaluation apply the same weights to the same images; "
    "their argmax can differ only at an exact tie of two logits",
}


@dataclasses.dataclass
class Stage:
    """One stage: its name, the function that runs it, and the detail of its progress line."""

    name: str
    run: Callable[[Run], None]
    line: Callable[[Run], str]
    enabled: Callable[[Run], bool] = lambda run: True  # False: left out of the run, its log and the report


class Run:
    """What the stages share: options, device, data, the torch init, final train states and the report dict."""

    def __init__(
        self,
        options,
        out_dir: Path,
        device: str,
        data: FashionData | None,
        log,
        report: dict,
        save: Callable[[], None],
    ):
        self.options, self.out_dir, self.device, self.data, self.log = options, out_dir, device, data, log
        self.report, self.save = report, save  # save() rewrites report.json and report.md
        self.quiet = (not sys.stderr.isatty()) if options.quiet is None else options.quiet
        self.spec = DEFAULT_SPEC
        self.init_state_dict = None  # the torch twin's seeded init, canonical layout; both twins load it for parity
        self.final_states: dict[str, dict[str, object]] = {}  # "lockstep"/"recipe" -> {"torch": state, "flax": state}
        self.report.setdefault("checks", [])

    @property
    def limited(self) -> FashionData:
        """The data as the options limit it."""
        return self.data.limit(self.options.limit_train, self.options.limit_test)

    def check(self, stage: str, name: str, value: float, tolerance: float, why: str) -> None:
        """Record a pass/fail check `value <= tolerance` (NaN fails); a check of the same name is replaced."""
        value = float(value)
        entry = {
            "stage": stage,
            "name": name,
            "value": value,
            "tolerance": float(tolerance),
            "passed": bool(value <= tolerance),
            "why": why,
        }
        checks = self.report["checks"]
        checks[:] = [c for c in checks if c["name"] != name] + [entry]

    def write_png(self, name: str, png: bytes) -> None:
        atomic_write_bytes(self.out_dir / name, png)
        if name not in self.report["plots"]:
            self.report["plots"].append(name)


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


# ----------------------------------------------------------------------------- 1 data


def stage_data(run: Run) -> None:
    if run.data is None:
        run.data = load_fashion_mnist(run.options.data_dir, download=run.options.download)
    limited = run.limited
    if run.options.parity_images > len(limited.test_labels):
        raise ValueError(
            f"parity_images {run.options.parity_images} is more than the {len(limited.test_labels)} test images"
        )
    run.report["data"] = {
        "source": run.data.source,
        "num_train": int(len(limited.train_labels)),
        "num_test": int(len(limited.test_labels)),
        "limit_train": run.options.limit_train,
        "limit_test": run.options.limit_test,
    }


# ----------------------------------------------------------------------------- 2 structures


def layer_names(spec) -> dict[str, str]:
    """Stack position -> what sits there: {"flatten": "Flatten", "0": "Linear(784, 512)", "1": "ReLU", ...}."""
    names = {"flatten": "Flatten"}
    sizes = dict(zip(spec.linear_indices, spec.layer_sizes, strict=True))
    for i in range(spec.stack_length):
        names[str(i)] = (
            f"Linear({sizes[i][0]}, {sizes[i][1]})" if i in sizes else ACTIVATION_DISPLAY[spec.activation_at(i)]
        )
    return names


def stage_structures(run: Run) -> None:
    import fashion_flax
    import fashion_nnx
    import fashion_torch

    seed, spec = run.options.seed, run.spec
    t_model = fashion_torch.create_model(spec, seed, fashion_torch.resolve_device(run.device))
    f_model, f_params = fashion_flax.create_model(spec, seed, fashion_flax.resolve_device(run.device))
    n_model = fashion_nnx.create_model(spec, seed, fashion_nnx.resolve_device(run.device))
    run.init_state_dict = fashion_torch.to_state_dict(t_model)
    t_shapes = {k: tuple(v.shape) for k, v in t_model.state_dict().items()}
    rows = []
    for key in checkpoint_keys(spec):
        path = flax_param_path(key)
        leaf = f_params["params"]
        for part in path:
            leaf = leaf[part]
        f_shape = tuple(leaf.shape)
        n_path = nnx_param_path(key)  # ('linear_relu_stack', 'layers', 0, 'kernel')
        n_shape = tuple(getattr(n_model.linear_relu_stack.layers[n_path[2]], n_path[3]).shape)
        expected_flax = t_shapes[key][::-1]  # kernel is the transposed weight; a bias reverses to itself
        rows.append(
            {
                "name": key,
                "torch_shape": list(t_shapes[key]),
                "flax_path": "/".join(path),
                "flax_shape": list(f_shape),
                "nnx_path": ".".join(map(str, n_path)),
                "nnx_shape": list(n_shape),
                "count": int(np.prod(t_shapes[key])),
                "shapes_match": f_shape == expected_flax and n_shape == expected_flax,
            }
        )
    run.report["structures"] = {
        "seed": seed,
        "torch_summary": fashion_torch.summary(t_model),
        "flax_summary": fashion_flax.summary(f_model, f_params),
        "nnx_summary": fashion_nnx.summary(n_model),
        "layer_names": layer_names(spec),
    }
    params = run.report["parameters"] = {
        "rows": rows,
        "total": sum(r["count"] for r in rows),
        "torch_total": fashion_torch.count_parameters(t_model),
        "flax_total": fashion_flax.count_parameters(f_params),
        "nnx_total": fashion_nnx.count_parameters(n_model),
        "spec_total": spec.num_parameters(),
    }
    counts = (*(params[f"{b}_total"] for b in BACKENDS), params["spec_total"])
    run.check(
        "structures",
        "parameter count, largest difference between torch, flax, nnx and the spec's formula",
        max(counts) - min(counts),
        0,
        WHY["exact"],
    )
    run.check(
        "structures",
        "parameter tensors whose flax or nnx shape is not the transposed torch shape",
        sum(not r["shapes_match"] for r in rows),
        0,
        WHY["exact"],
    )


# ----------------------------------------------------------------------------- 3 parity


def stage_parity(run: Run) -> None:
    n = run.options.parity_images
    x = scale_images(run.data.test_images[:n])  # (n, 28, 28) float32 in [0, 1]
    y = run.data.test_labels[:n]  # (n,) int32
    precisions = parity_precisions(run.device)
    # {"flax": {precision: figures}, "nnx": {...}}: each JAX twin against torch on the same weights
    results = {twin: {p: parity_off_kink(run, x, y, p, twin) for p in precisions} for twin in JAX_TWINS}
    set_matmul_precision(run.options.precision)  # what the rest of the run uses
    run.report["parity"] = {
        "images": n,
        "weights": f"the torch twin's seeded init (seed {run.options.seed}), loaded into every twin",
        "precisions": list(precisions),
        "note": CPU_PRECISION_NOTE if run.device == "cpu" else "tf32: TensorFloat-32 matmuls in every twin",
        "tolerance_highest": PARITY_TOL,
        **results["flax"],  # torch vs flax at the top level, as before the NNX twin
        "nnx": results["nnx"],
    }
    for twin in JAX_TWINS:
        h = results[twin]["highest"]
        run.check(
            "parity",
            f"parity at highest: logits, every layer's output and the loss, max |torch − {twin}|",
            max(h["logits"], h["loss"], h["max_layer"]),
            PARITY_TOL,
            WHY["parity"],
        )
        off = h.get("off_kink")
        kink = (
            f"; {len(off['dropped'])} of {n} images left out, where a ReLU input is exactly 0 in one twin only "
            "and the derivative (0 or 1) differs by definition"
            if off
            else ""
        )
        run.check(
            "parity",
            f"parity at highest: every parameter and input gradient, max |torch − {twin}|",
            h["max_grad_checked"],
            PARITY_TOL,
            WHY["parity"] + kink,
        )


CPU_PRECISION_NOTE = (
    "one column, highest: TF32 is a matmul format of NVIDIA tensor cores (Ampere and later); on a CPU both "
    "frameworks run every float32 matmul in full fp32 whatever the setting, so a tf32 column would repeat this one"
)


def parity_precisions(device: str) -> tuple[str, ...]:
    """The matmul precisions parity runs: highest only on a CPU (tf32 would repeat its fp32 matmuls), both on a GPU."""
    return ("highest",) if device == "cpu" else ("highest", "tf32")


def parity_off_kink(run: Run, x: np.ndarray, y: np.ndarray, precision: str, twin: str = "flax") -> dict:
    """parity() on the batch; where an image has a ReLU unit on opposite sides of 0 in the twins, again without it.

    Such a unit (pre-activation 0.0 in one twin, 3e-9 in the other) switches the ReLU derivative, so the
    gradients of that image differ by what flows through the unit: a kink, not a rounding error. The
    forward figures and the gradients of every other image still have to meet the fp32 tolerance.
    """
    from .parity import parity

    result = parity(run.init_state_dict, x, y, precision, run.device, run.spec, twin)
    keep, current = np.arange(len(y)), result
    for _ in range(3):  # a smaller batch may round differently; a kink there is left out too
        if not current["kink_examples"]:
            break
        keep = np.delete(keep, current["kink_examples"])
        current = parity(run.init_state_dict, x[keep], y[keep], precision, run.device, run.spec, twin)
    if current is not result:
        current["images"] = int(len(keep))
        current["dropped"] = sorted(set(range(len(y))) - set(keep.tolist()))
        result["off_kink"] = current
    result["max_grad_checked"] = current["max_grad"]  # the figure held to the tolerance
    return result


# ----------------------------------------------------------------------------- 4 activations


def stage_activations(run: Run) -> None:
    from .parity import activation_grid

    grid = run.report["activations"] = activation_grid()
    fns = grid["functions"].values()
    why = WHY["activations"]
    run.check(
        "activations", "activation grid: values, max |torch − flax|", max(f["value_diff"] for f in fns), PARITY_TOL, why
    )
    run.check(
        "activations",
        "activation grid: gradients, max |torch − flax|",
        max(f["grad_diff"] for f in fns),
        PARITY_TOL,
        why,
    )


# ----------------------------------------------------------------------------- 5 lockstep


def lockstep_plan(run: Run):
    """(config, steps, weight_every) of the lockstep stage: the tutorial's SGD for `steps` steps of one epoch."""
    config = tutorial_config(epochs=1, device=run.device, seed=run.options.seed)
    steps = run.options.lockstep_steps
    if steps is None and not run.options.full and run.device == "cpu":
        steps = QUICK_LOCKSTEP_STEPS
    num_train = len(run.data.train_labels[: run.options.limit_train]) if run.data is not None else 60_000
    epoch_steps = config.steps_per_epoch(num_train)
    total = epoch_steps if steps is None else min(steps, epoch_steps)
    return config, total, max(1, total // 40)  # ~40 weight comparisons, whatever the length


def stage_lockstep(run: Run) -> None:
    from .lockstep import lockstep

    config, steps, weight_every = lockstep_plan(run)
    results, states = {}, {}
    for twin in JAX_TWINS:  # torch vs flax, then torch vs nnx: the same init, batches and steps
        result = results[twin] = lockstep(
            run.limited,
            config,
            steps=steps,
            weight_every=weight_every,
            precision=run.options.precision,
            spec=run.spec,
            progress=not run.quiet,
            keep_states=True,
            twin=twin,
        )
        pair = result.pop("states")  # {"torch": torch's state, "flax": the JAX twin's state}
        states.setdefault("torch", pair["torch"])  # torch takes the same steps in both runs
        states[twin] = pair["flax"]
        result["requested_steps"] = run.options.lockstep_steps
        result["weight_every"] = weight_every
        result["tolerance"] = LOCKSTEP_TOL
    run.final_states["lockstep"] = states  # the classes stage predicts with every final model
    save_checkpoints(run, "lockstep", states)
    # torch vs flax at the top level, as before the NNX twin; torch vs nnx under "nnx"
    run.report["lockstep"] = {**results["flax"], "nnx": results["nnx"]}
    for twin, result in results.items():
        run.check(
            "lockstep",
            f"lockstep ({result['steps']} SGD steps): loss at every step, max |torch − {twin}|",
            result["max_loss_diff"],
            LOCKSTEP_TOL,
            WHY["lockstep"],
        )
        run.check(
            "lockstep",
            f"lockstep ({result['steps']} SGD steps): every weight after the last step, max |torch − {twin}|",
            result["final_weight_diff"],
            LOCKSTEP_TOL,
            WHY["lockstep"],
        )
    run.write_png("lockstep.png", plots.plot_lockstep(results))


# ----------------------------------------------------------------------------- 6 training


def stage_training(run: Run) -> None:
    opts = run.options
    limits = {"device": run.device, "seed": opts.seed, "limit_train": opts.limit_train, "limit_test": opts.limit_test}
    limits["precision"] = opts.precision  # compare --precision: every twin trains at it (the config records it)
    recipe = TrainConfig(**limits) if opts.full else TrainConfig(epochs=opts.quick_epochs, **limits)
    # tutorial: None = not run (quick mode), {} = still to come
    # the matmul precision every twin trains at: the config's (compare --precision; train's default is the same)
    training = run.report["training"] = {"precision": recipe.precision, "tutorial": {} if opts.full else None}
    run.final_states["recipe"] = train_both(run, "recipe", recipe, training)
    entry = training["recipe"]
    if opts.limit_train is None:  # the tolerance is for the full training set; a cut-down set is noisier
        for twin in JAX_TWINS:
            run.check(
                "training",
                f"accuracy recipe ({_epochs(recipe.epochs)}): final test accuracy, "
                f"|torch − {twin}| in percentage points",
                entry["accuracy_diff_pp"] if twin == "flax" else entry["accuracy_diff_pp_nnx"],
                ACCURACY_TOL_PP,
                WHY["accuracy"],
            )
    run.write_png("curves.png", plots.plot_curves(training))
    run.write_png("epoch_times.png", plots.plot_epoch_times(training))
    if opts.full:
        train_both(run, "tutorial", tutorial_config(epochs=opts.tutorial_epochs, **limits), training)
        run.write_png("curves.png", plots.plot_curves(training))


def train_both(run: Run, name: str, config: TrainConfig, training: dict) -> dict:
    """Train every twin with `config` -> their final train states.

    The report is saved after each twin, so a crash keeps the earlier ones.
    """
    default_epochs = (TrainConfig() if name == "recipe" else tutorial_config()).epochs
    entry = training[name] = {
        "config": config.to_dict(),
        "default_epochs": default_epochs,
        "shortened": config.epochs < default_epochs,
    }
    states = {}
    machine_start = machine_state()
    for backend in BACKENDS:
        run.log(f"[compare]     {RECIPE_NAMES[name]}, {backend} twin, {_epochs(config.epochs)}")
        train = importlib.import_module(f"fashion_{backend}.train")
        set_matmul_precision(config.precision)  # train_and_evaluate sets it too; the figures below must share it
        start = time.perf_counter()
        writer = None
        if run.options.tensorboard is not None:  # DIR/<recipe>/<twin>/, the same scalars as train --tensorboard
            from fashion_common.tensorboard import EpochWriter

            writer = EpochWriter(Path(run.options.tensorboard) / name, backend)
        try:
            states[backend], metrics = train.train_and_evaluate(
                config, run.data, quiet=run.quiet, log=run.log, on_epoch=writer
            )
        finally:
            if writer is not None:
                writer.close()
        metrics["wall_seconds"] = time.perf_counter() - start
        entry[backend] = metrics
        run.save()
    entry["machine"] = machine.window(machine_start, machine_state())  # epoch_times.png warns inside when busy
    save_checkpoints(run, name, states)
    final = {b: entry[b]["epochs"][-1]["test_accuracy"] for b in BACKENDS}
    entry["final_test_accuracy"] = final
    entry["accuracy_diff_pp"] = 100 * abs(final["torch"] - final["flax"])
    entry["accuracy_diff_pp_nnx"] = 100 * abs(final["torch"] - final["nnx"])
    return states


def save_checkpoints(run: Run, name: str, states: dict) -> None:
    """Each twin's final model of run `name` -> <out_dir>/<name>-<twin>.safetensors, listed in report["checkpoints"].

    A reader can then `fashion-twins predict` or `evaluate` with the models the report describes.
    """
    files = run.report.setdefault("checkpoints", {}).setdefault(name, {})
    for backend in BACKENDS:
        path = run.out_dir / f"{name}-{backend}.safetensors"
        twin = importlib.import_module(f"fashion_{backend}")
        train = importlib.import_module(f"fashion_{backend}.train")
        twin.save_checkpoint(train.trained_model(states[backend]), path)  # one API: the model load_checkpoint gives
        files[backend] = path.name


# ----------------------------------------------------------------------------- 7 classes


def predict_classes(backend: str, state, images: np.ndarray, batch_size: int = 10_000) -> np.ndarray:
    """uint8 images (N, 28, 28) -> (N,) int64 classes.

    The argmax of the twin's own predict_proba on its final train state.
    """
    train = importlib.import_module(f"fashion_{backend}.train")
    model = train.trained_model(state)
    chunks = [
        train.predict_proba(model, scale_images(images[i : i + batch_size])).argmax(axis=1)
        for i in range(0, len(images), batch_size)
    ]  # (b, 10) -> (b,)
    return np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, np.int64)


def top_confusions(confusions: dict, k: int = 5) -> list:
    """The k largest off-diagonal cells by all twins' counts together: [{"true", "predicted", "torch", "flax", "nnx"}].

    confusions: twin -> (10, 10) counts, rows true class, columns predicted.
    """
    counts = {b: np.asarray(c) for b, c in confusions.items()}
    total = sum(counts.values())
    np.fill_diagonal(total, 0)
    order = np.argsort(-total, axis=None, kind="stable")[:k]  # flat indices, largest first, ties in row-major order
    cells = [np.unravel_index(i, total.shape) for i in order]
    return [
        {"true": int(i), "predicted": int(j), **{b: int(c[i, j]) for b, c in counts.items()}}
        for i, j in cells
        if total[i, j] > 0
    ]


def pair_agreement(predictions: dict, labels: np.ndarray) -> list:
    """Each pair of twins on the same images: [{"twins": [a, b], "agreement", "disagreements", "both_right"}]."""
    rows = []
    for a, b in PAIRS:
        same = predictions[a] == predictions[b]
        rows.append(
            {
                "twins": [a, b],
                "agreement": agreement(predictions[a], predictions[b]),
                "disagreements": int((~same).sum()),
                "both_right": float(np.mean(same & (predictions[a] == labels))),
            }
        )
    return rows


def stage_classes(run: Run) -> None:
    data = run.limited
    images, labels = data.test_images, np.asarray(data.test_labels, dtype=np.int64)  # (N, 28, 28) uint8, (N,)
    set_matmul_precision(run.options.precision)
    section = run.report["classes"] = {"class_names": list(CLASS_NAMES), "num_test": int(len(labels))}
    for name in ("recipe", "lockstep"):
        states = run.final_states[name]
        predictions = {b: predict_classes(b, states[b], images) for b in BACKENDS}
        entry = section[name] = {}
        for backend in BACKENDS:
            confusion = confusion_matrix(labels, predictions[backend])
            entry[backend] = {
                "confusion": confusion.tolist(),  # rows: true class, columns: predicted class
                "per_class_accuracy": per_class_accuracy(confusion).tolist(),
                "accuracy": accuracy(confusion),
            }
        entry["pairs"] = pair_agreement(predictions, labels)  # torch–flax, torch–nnx, flax–nnx
        entry.update({k: entry["pairs"][0][k] for k in ("agreement", "disagreements", "both_right")})  # torch–flax
        per_class = np.array([entry[b]["per_class_accuracy"] for b in BACKENDS])  # (3, 10), NaN: class absent
        # the largest gap between any two twins, per class; NaN where a class has no test image
        entry["per_class_diff_pp"] = (100 * (per_class.max(axis=0) - per_class.min(axis=0))).tolist()
        accuracies = [entry[b]["accuracy"] for b in BACKENDS]
        entry["accuracy_diff_pp"] = 100 * (max(accuracies) - min(accuracies))
        entry["top_confusions"] = top_confusions({b: entry[b]["confusion"] for b in BACKENDS})
    for backend in BACKENDS:
        evaluated = run.report["training"]["recipe"]["final_test_accuracy"][backend]
        run.check(
            "classes",
            f"{backend} twin, accuracy recipe: test accuracy from predict_proba vs the training loop's evaluation, "
            "|difference| in percentage points",
            100 * abs(section["recipe"][backend]["accuracy"] - evaluated),
            PREDICT_TOL_PP,
            WHY["predict"],
        )
    for pair in section["lockstep"]["pairs"]:
        a, b = pair["twins"]
        run.check(
            "classes",
            f"lockstep twins {a} and {b}: test images on which they predict different classes, in percent",
            100 * (1 - pair["agreement"]),
            LOCKSTEP_DISAGREE_TOL,
            WHY["lockstep_agree"],
        )
    run.write_png(
        "confusion.png",
        plots.plot_confusion(section["recipe"], CLASS_NAMES, f"accuracy recipe, {len(labels):,} test images"),
    )


# ------------------------------------------------------------------------ 8 distributed (compare --distributed N only)


def stage_distributed(run: Run) -> None:
    """Each twin on one device vs N-way data parallel (torch DDP under torchrun, flax and nnx over a mesh).

    See fashion_compare.distributed.
    """
    from .distributed import distributed_comparison

    n = run.options.distributed
    result = run.report["distributed"] = distributed_comparison(
        n, DISTRIBUTED_STEPS, DISTRIBUTED_BATCH, run.device, data=run.data, data_dir=run.options.data_dir, log=run.log
    )
    why = WHY["distributed"]
    for twin, engine in (("torch", "DDP"), ("flax", "sharded"), ("nnx", "sharded")):
        run.check(
            "distributed",
            f"{twin} {engine} over {n} vs one device ({result['steps']} SGD steps): every weight, max |ΔW|",
            result[twin]["max_abs_dW_parallel_vs_single"],
            DISTRIBUTED_TOL,
            why,
        )
    run.check(
        "distributed",
        f"torch DDP vs flax sharded over {n} ({result['steps']} SGD steps): every weight, max |ΔW|",
        result["max_abs_dW_torch_ddp_vs_flax_sharded"],
        DISTRIBUTED_TOL,
        why,
    )
    run.check(
        "distributed",
        f"torch DDP vs nnx sharded over {n} ({result['steps']} SGD steps): every weight, max |ΔW|",
        result["max_abs_dW_torch_ddp_vs_nnx_sharded"],
        DISTRIBUTED_TOL,
        why,
    )


# ----------------------------------------------------------------------------- the list


def _lockstep_line(run: Run) -> str:
    _, steps, _ = lockstep_plan(run)
    return f"({steps} SGD steps, batch 64, one init, one batch order)"


def _training_line(run: Run) -> str:
    epochs = TrainConfig.epochs if run.options.full else run.options.quick_epochs
    tutorial = f"; tutorial recipe, {run.options.tutorial_epochs} epochs" if run.options.full else ""
    return f"(accuracy recipe, {_epochs(epochs)}, all three twins{tutorial})"


STAGES = (  # run in this order; the line is the detail of "[compare] 3/7 parity (64 test images, highest and tf32) ..."
    Stage("data", stage_data, lambda run: "(Fashion-MNIST)"),
    Stage("structures", stage_structures, lambda run: f"(every twin from seed {run.options.seed}, on {run.device})"),
    Stage(
        "parity",
        stage_parity,
        lambda run: f"({run.options.parity_images} test images, {' and '.join(parity_precisions(run.device))})",
    ),
    Stage("activations", stage_activations, lambda run: "(binary_step, sigmoid, tanh, relu, softmax on the grid)"),
    Stage("lockstep", stage_lockstep, _lockstep_line),
    Stage("training", stage_training, _training_line),
    Stage(
        "classes",
        stage_classes,
        lambda run: "(confusion matrices, per-class accuracy, agreement of the twins on the test set)",
    ),
    Stage(
        "distributed",
        stage_distributed,
        lambda run: (
            f"(each twin on 1 device vs {run.options.distributed}-way data parallel, {DISTRIBUTED_STEPS} SGD "
            f"steps{', simulated devices' if run.device == 'cpu' else ''})"
        ),
        enabled=lambda run: run.options.distributed > 0,
    ),
)
