"""report.md from the report dict (as written to report.json).

Formatting only: every figure and check comes from the dict.
"""

from __future__ import annotations

import math

from fashion_common.config import TrainConfig
from fashion_common.spec import BACKENDS

from . import machine
from .plots import LOG_FLOOR, PLOTS, smoothed_loss_floor


def _slash(values: dict, fmt=None) -> str:
    """Each given twin's value in BACKENDS order: '90.12% / 90.05% / 90.05%'."""
    fmt = fmt or _pct
    return " / ".join(fmt(values[b]) for b in BACKENDS if b in values)


def _pair_rows(entry: dict) -> list[dict]:
    """The pairwise agreement rows of a classes entry (an older report has torch–flax only)."""
    return entry.get("pairs") or [
        {"twins": ["torch", "flax"], **{k: entry[k] for k in ("agreement", "disagreements", "both_right")}}
    ]


def _e(x) -> str:
    """A max |diff| for a table: 0 stays 0, anything else in 2-digit scientific notation."""
    x = float(x)
    return "0" if x == 0 else ("inf" if math.isinf(x) else ("nan" if math.isnan(x) else f"{x:.2e}"))


def _g(x) -> str:
    """An activation value as it is: -0, inf, nan and 1e-07 all visible."""
    return f"{float(x):.6g}"


def device_text(device: str, name: str) -> str:
    """The header's device: "cpu (AMD EPYC 7B13, 2 cores, ...)" once, not "cpu — cpu (...)"; "gpu — <cards>"."""
    return name if name.split(" ", 1)[0] == device else f"{device} — {name}"


def _ok(flag: bool) -> str:
    return "yes" if flag else "**NO**"


def _v(x) -> str:
    """A check's value: a tiny difference in scientific notation (8.34e-07), a larger one as it reads (0.15)."""
    x = float(x)
    return _e(x) if x == 0 or not math.isfinite(x) or abs(x) < 1e-3 else f"{x:.3g}"


def _t(x) -> str:
    """A tolerance: 0, 1e-05, 0.5."""
    return f"{float(x):g}"


def _pct(share) -> str:
    """A share in [0, 1] as a percentage with two decimals."""
    return f"{100 * float(share):.2f}%"


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell (a literal | would end the cell)."""
    return str(text).replace("|", "\\|")


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def render_markdown(report: dict) -> str:
    """report.md from the report dict; sections of stages not yet run are left out, PNGs linked only once written."""
    meta = report["meta"]

    def have_png(name):
        return name in report.get("plots", ())

    lines: list[str] = ["# fashion-twins: the torch, flax (linen) and nnx twins, side by side", ""]
    mode = meta["mode"]
    mode_text = (
        "quick (recipe shortened; tutorial recipe only with --full)"
        if mode == "quick"
        else f"full (the default {TrainConfig().epochs}-epoch recipe and the tutorial recipe)"
    )
    lines += [
        f"- **date**: {meta['date']}",
        f"- **mode**: {mode_text}",
        f"- **device**: {device_text(meta['device'], meta['device_name'])}",
        "- **versions**: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- **platform**: {meta['platform']}",
        f"- **command**: `{meta['command']}`",
        f"- **seed**: {meta['options']['seed']}",
        f"- **status**: {report['status']['state']}"
        + (
            ""
            if report["status"]["state"] == "complete"
            else f" (stages done: {', '.join(report['status']['stages_done']) or 'none'})"
        ),
        "",
    ]
    lines += machine.md_machine(report)  # threads, load per timed stage, the busy warning
    lines += _md_checks(report)
    lines += _md_figures(report)
    lines += _md_checkpoints(report.get("checkpoints") or {})
    if "structures" in report:
        lines += _md_structures(report)
    if "parity" in report:
        lines += _md_parity(report)
    if "activations" in report:
        lines += _md_activations(report["activations"])
    if "lockstep" in report:
        lines += _md_lockstep(report["lockstep"], have_png) + machine.md_busy_note(report, "lockstep")
    if "training" in report:
        lines += _md_training(report["training"], have_png) + machine.md_busy_note(report, "training")
    if "classes" in report:
        lines += _md_classes(report["classes"], report.get("lockstep") or {}, have_png)
    if "distributed" in report:
        lines += md_distributed(report["distributed"]) + machine.md_busy_note(report, "distributed")
    if report.get("timings"):
        lines += ["## Timings", "", "| stage | seconds |", "| --- | ---: |"]
        lines += [f"| {k.removesuffix('_seconds')} | {v:.1f} |" for k, v in report["timings"].items()]
        lines.append("")
    return "\n".join(lines)


def _md_checks(report: dict) -> list[str]:
    """Every pass/fail check the run made, with its value, its tolerance and why the tolerance has that size."""
    checks = report.get("checks") or []
    if not checks:
        return []
    passed = sum(bool(c["passed"]) for c in checks)
    lines = [
        "## Checks",
        "",
        f"{passed} of {len(checks)} checks passed"
        + ("." if passed == len(checks) else "; the failures are marked **NO**.")
        + " Each check passes when its value is at most its tolerance (NaN fails).",
        "",
        "| # | check | value | tolerance | passed | why this tolerance |",
        "| ---: | --- | ---: | ---: | --- | --- |",
    ]
    for i, c in enumerate(checks, 1):
        lines.append(
            f"| {i} | {_cell(c['name'])} | {_v(c['value'])} | ≤ {_t(c['tolerance'])} | {_ok(c['passed'])} | "
            f"{_cell(c['why'])} |"
        )
    return lines + [""]


def _md_figures(report: dict) -> list[str]:
    """The headline figures that have no pass/fail: accuracies and the twins' agreement."""
    rows = []
    training = report.get("training") or {}
    for name, label in (("recipe", "accuracy recipe"), ("tutorial", "tutorial recipe")):
        entry = training.get(name) or {}
        if "final_test_accuracy" in entry:
            acc = entry["final_test_accuracy"]
            note = (
                f", {_epochs(entry['config']['epochs'])} of {entry['default_epochs']}"
                if entry["shortened"]
                else f", {_epochs(entry['config']['epochs'])}"
            )
            gap = f"\\|torch − flax\\| {entry['accuracy_diff_pp']:.2f} pp"
            if "accuracy_diff_pp_nnx" in entry:
                gap += f", \\|torch − nnx\\| {entry['accuracy_diff_pp_nnx']:.2f} pp"
            rows.append(f"| {label}{note}: final test accuracy {' / '.join(BACKENDS)} | {_slash(acc)} ({gap}) |")
    classes = report.get("classes") or {}
    if "recipe" in classes:
        for pair in _pair_rows(classes["recipe"]):
            a, b = pair["twins"]
            rows.append(
                f"| independently trained twins {a} and {b} (accuracy recipe) predict the same class | "
                f"{_pct(pair['agreement'])} of {classes['num_test']:,} test images |"
            )
    if "lockstep" in classes:
        r = classes["lockstep"]
        steps = report.get("lockstep", {}).get("steps")
        trained = f"{steps} SGD steps of the tutorial recipe" if steps else "the tutorial recipe"
        for pair in _pair_rows(r):
            a, b = pair["twins"]
            rows.append(
                f"| lockstep twins {a} and {b} (one init, one batch order) predict the same class | "
                f"{_pct(pair['agreement'])} of {classes['num_test']:,} test images "
                f"({_count(pair['disagreements'], 'image')} differ) |"
            )
        accs = {b: r[b]["accuracy"] for b in BACKENDS if b in r}
        rows.append(
            f"| ... and are right on (test accuracy {' / '.join(accs)}, after {trained}) | "
            f"{_slash(accs)}: agreement says the twins compute the same function, not that it is a good classifier |"
        )
    if not rows:
        return []
    return ["## Headline figures", "", "| figure | value |", "| --- | --- |", *rows, ""]


CHECKPOINT_RUNS = {
    "recipe": "accuracy recipe",
    "tutorial": "tutorial recipe",
    "lockstep": "lockstep (one init, one batch order)",
}


def _md_checkpoints(checkpoints: dict) -> list[str]:
    """The final models the run trained, kept beside this report, and how to use them."""
    if not checkpoints:
        return []
    lines = [
        "## Checkpoints",
        "",
        "The final models this run trained are in this folder (the canonical safetensors layout: every twin loads "
        "every file):",
        "",
        "| run | " + " | ".join(f"{b} twin" for b in BACKENDS) + " |",
        "| --- |" + " --- |" * len(BACKENDS),
    ]
    order = [n for n in CHECKPOINT_RUNS if n in checkpoints] + [n for n in checkpoints if n not in CHECKPOINT_RUNS]
    for name in order:
        cells = " | ".join(f"`{checkpoints[name][b]}`" if b in checkpoints[name] else "—" for b in BACKENDS)
        lines.append(f"| {CHECKPOINT_RUNS.get(name, name)} | {cells} |")
    best = checkpoints[order[0]]  # the accuracy recipe's when it has run: the model worth predicting with
    example = best.get("torch") or next(iter(best.values()))
    lines += [
        "",
        f"For example, from this folder: `fashion-twins predict --backend nnx {example} shoe.jpg` or "
        f"`fashion-twins evaluate --backend torch {example}`.",
        "",
    ]
    return lines


def _md_structures(report: dict) -> list[str]:
    s, p = report["structures"], report["parameters"]
    lines = [
        "## 1. Structures",
        "",
        f"Every twin built from seed {s['seed']}. `fashion_torch.summary(model)`:",
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
    ]
    if "nnx_summary" in s:
        lines += ["`fashion_nnx.summary(model)`:", "", "```text", s["nnx_summary"], "```", ""]
    lines += [
        "## 2. Parameters",
        "",
        "The flax and nnx kernels are the transposed torch weight ([in, out] instead of [out, in]); "
        "flax paths are inside the `params` collection (`fashion_common.spec.flax_param_path`), nnx paths in the "
        "module's state (`fashion_common.spec.nnx_param_path`).",
        "",
        "| torch name | torch shape | flax path | flax shape | nnx path | nnx shape | count |",
        "| --- | --- | --- | --- | --- | --- | ---: |",
    ]
    for r in p["rows"]:
        flag = "" if r["shapes_match"] else " **(shape mismatch)**"
        nnx_cells = f"`{r['nnx_path']}` | {tuple(r['nnx_shape'])}" if "nnx_path" in r else "— | —"
        lines.append(
            f"| `{r['name']}` | {tuple(r['torch_shape'])} | `{r['flax_path']}` | {tuple(r['flax_shape'])}{flag} | "
            f"{nnx_cells} | {r['count']:,} |"
        )
    counted = ", ".join(f"{b} {p[f'{b}_total']:,}" for b in BACKENDS if f"{b}_total" in p)
    lines += [
        f"| **total** | | | | | | **{p['total']:,}** |",
        "",
        f"Counted by each twin: {counted}; "
        f"the spec's formula (784+1)·512 + (512+1)·512 + (512+1)·10 = {p['spec_total']:,}.",
        "",
    ]
    return lines


def _md_parity(report: dict) -> list[str]:
    par = report["parity"]
    names = report.get("structures", {}).get("layer_names", {})
    precisions = par.get("precisions", ["highest", "tf32"])  # a CPU runs highest only (see stages.parity_precisions)
    # one column per (JAX twin, precision): torch − flax from the top level, torch − nnx from par["nnx"]
    per_twin = {"flax": par, **({"nnx": par["nnx"]} if "nnx" in par else {})}
    columns = []
    for twin, figures in per_twin.items():
        for p in precisions:
            columns.append((f"torch − {twin}, {p}", figures[p]))
            off = figures[p].get("off_kink")
            if off:
                columns.append((f"torch − {twin}, {p}, {off['images']} images", off))
    lines = [
        "## 3. Parity",
        "",
        f"The same weights — {par['weights']} — and the same {par['images']} real test images (scaled /255, with "
        "their labels) "
        "in every twin; every figure is max |torch − twin| (the loss: |torch − twin|). Gradients are of the mean "
        "cross-entropy, the parameter gradients compared in the torch layout.",
        "",
        f"**Precision:** {par['note']}.",
        "At highest the expected size is fp32 rounding of differently ordered sums (≤ ~1e-6); tolerance "
        f"{_t(par['tolerance_highest'])}.",
        "",
        "| figure | " + " | ".join(c for c, _ in columns) + " |",
        "| --- |" + " ---: |" * len(columns),
    ]

    def row(label, get):
        return lines.append(f"| {label} | " + " | ".join(_e(get(r)) for _, r in columns) + " |")

    row("logits", lambda r: r["logits"])
    row("loss", lambda r: r["loss"])
    for k in par["highest"]["layers"]:
        row(f"layer `{k}` ({names[k]})" if k in names else f"layer `{k}`", lambda r, k=k: r["layers"][k])
    for k in par["highest"]["grads"]:
        row("grad w.r.t. input" if k == "input" else f"grad `{k}`", lambda r, k=k: r["grads"][k])
    lines.append(
        "| **max over layers / grads** | "
        + " | ".join(f"{_e(r['max_layer'])} / {_e(r['max_grad'])}" for _, r in columns)
        + " |"
    )
    lines.append("")
    kinked = [p for p in precisions if any(f[p].get("off_kink") for f in per_twin.values())]
    if kinked:
        dropped = sorted(
            {i for f in per_twin.values() for p in kinked for i in (f[p].get("off_kink") or {}).get("dropped", [])}
        )
        lines += [
            f"**ReLU kink ({' and '.join(kinked)}):** {_count(len(dropped), 'test image')} of the batch (index "
            f"{', '.join(map(str, dropped))}) "
            f"{'has' if len(dropped) == 1 else 'have'} a hidden pre-activation that is > 0 in one twin and not in "
            "the other (e.g. exactly 0.0 in torch, ~1e-9 in flax). "
            "ReLU's derivative jumps there (0 at 0, 1 above), so that image's gradients differ by what flows "
            "through the unit, "
            "not by rounding; each twin is right. The columns marked with fewer images repeat the comparison "
            "without them; "
            f"at highest, that is the gradient figure held to {_t(par['tolerance_highest'])}.",
            "",
        ]
    return lines


def _md_activations(grid: dict) -> list[str]:
    fns = grid["functions"]
    inputs = grid["inputs"]
    grid_fns = {name: f for name, f in fns.items() if name != "softmax"}  # softmax has rows of its own, below
    header = "| x | " + " | ".join(f"{name} torch | {name} flax" for name in grid_fns) + " |"
    lines = [
        "## 4. Activation grid",
        "",
        "The nnx twin's activations are the flax twin's own functions (`fashion_nnx.relu is fashion_flax.relu`), "
        "so the flax columns stand for both JAX twins.",
        "",
        "Each of the tutorial's activations but softmax on inputs where naive code breaks (±inf, NaN, ±0, ±1e-7, "
        "saturation at ±20 and ±1e4).",
        "",
        header,
        "| " + " | ".join(["---:"] * (1 + 2 * len(grid_fns))) + " |",
    ]
    for i, x in enumerate(inputs):
        cells = [_g(x)]
        for f in grid_fns.values():
            cells += [_g(f["torch"][i]), _g(f["flax"][i])]
        lines.append("| " + " | ".join(cells) + " |")
    if "softmax" in fns:
        soft = fns["softmax"]
        lines += [
            "",
            "Softmax runs over rows of its own, one softmax per row: over the grid's finite inputs the 1e4 would take "
            "all the mass, leaving every other output, and its gradient, exactly 0 in any implementation. Each row "
            "spreads its mass; the second and third are the first shifted by ±1e4, where a softmax that does not "
            "subtract the row's maximum overflows or underflows (in float32, ±1e-7 vanishes against 1e4).",
            "",
            "| row | x | torch | flax |",
            "| ---: | --- | --- | --- |",
        ]
        for r in range(len(soft["x"])):
            cells = [", ".join(_g(v) for v in row[r]) for row in (soft["x"], soft["torch"], soft["flax"])]
            lines.append(f"| {r + 1} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Max |torch − flax| over the grid (NaN must sit in the same places; a NaN in one twin only counts as inf). "
        "The gradient is of sum(y · w) with fixed weights w in [−1, 1], so softmax's gradient is not identically 0. "
        "Values are printed as they come, signed zeros included (−0 and 0 are equal as numbers, so they count as "
        "no difference).",
        "",
        "| activation | max value diff | max gradient diff |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {_e(f['value_diff'])} | {_e(f['grad_diff'])} |" for name, f in fns.items()]
    lines.append("")
    return lines


def _md_lockstep(ls: dict, have_png) -> list[str]:
    cfg = ls["config"]
    pairs = {"flax": ls, **({"nnx": ls["nnx"]} if "nnx" in ls else {})}  # torch vs each JAX twin
    lines = [
        "## 5. Lockstep",
        "",
        "Torch and each JAX twin (flax, then nnx) "
        f"start from the torch twin's init (seed {cfg['seed']}) and take the same {ls['steps']} steps "
        "on the same batches "
        f"(the tutorial's plain SGD, lr {cfg['lr']:g}, batch {cfg['batch_size']}), at {ls['precision']} precision. "
        "The loss is compared at every step, every weight "
        + ("at every step." if ls["weight_every"] == 1 else f"every {ls['weight_every']} steps and at the last."),
        "",
        "| figure | " + " | ".join(f"torch vs {t}" for t in pairs) + " |",
        "| --- |" + " ---: |" * len(pairs),
        "| steps | " + " | ".join(str(r["steps"]) for r in pairs.values()) + " |",
        "| max \\|loss diff\\| over the steps | " + " | ".join(_e(r["max_loss_diff"]) for r in pairs.values()) + " |",
        "| final max \\|weight diff\\| | " + " | ".join(_e(r["final_weight_diff"]) for r in pairs.values()) + " |",
        "| loss, first → last step (torch) | "
        + " | ".join(f"{r['loss_torch'][0]:.4f} → {r['loss_torch'][-1]:.4f}" for r in pairs.values())
        + " |",
        "| loss, first → last step (the JAX twin) | "
        + " | ".join(f"{r['loss_flax'][0]:.4f} → {r['loss_flax'][-1]:.4f}" for r in pairs.values())
        + " |",
        "| seconds | " + " | ".join(f"{r['seconds']:.1f}" for r in pairs.values()) + " |",
        "",
        f"Tolerance {_t(ls['tolerance'])}: fp32 rounding of differently ordered sums, ~1e-7 relative per op, is "
        "all that may separate them. "
        f"The plot shows the running maximum of each difference up to every step (the largest seen so far); "
        f"on its log axis, exact zeros are drawn at {LOG_FLOOR:g}.",
        "",
    ]
    if have_png("lockstep.png"):
        lines += [f"![{PLOTS['lockstep.png']}](lockstep.png)", ""]
    return lines


def _md_history(entry: dict) -> list[str]:
    """One row per epoch, each figure for every twin that trained (torch, flax, nnx)."""
    twins = [b for b in BACKENDS if b in entry]
    columns = [("train loss", "train_loss", "{:.4f}"), ("test loss", "test_loss", "{:.4f}")]
    header = "| epoch | " + " | ".join(f"{label} {b}" for label, _, _ in columns for b in twins)
    header += (
        " | " + " | ".join(f"test acc {b}" for b in twins) + " | max Δ pp | " + " | ".join(f"s {b}" for b in twins)
    )
    lines = [header + " |", "| ---: |" + " ---: |" * (4 * len(twins) + 1)]
    # strict=False on purpose: one row per epoch every twin has; never fail rendering on uneven histories
    for rows in zip(*(entry[b]["epochs"] for b in twins), strict=False):
        accs = [r["test_accuracy"] for r in rows]
        cells = [fmt.format(r[key]) for _, key, fmt in columns for r in rows]
        cells += [f"{100 * a:.2f}%" for a in accs] + [f"{100 * (max(accs) - min(accs)):.2f}"]
        cells += [f"{r['epoch_seconds']:.2f}" for r in rows]
        lines.append(f"| {rows[0]['epoch']} | " + " | ".join(cells) + " |")
    return lines + [""]


def _md_training(training: dict, have_png) -> list[str]:
    lines = ["## 6. Training", ""]
    recipe = training.get("recipe") or {}
    if "config" in recipe:
        cfg = recipe["config"]
        lines += [
            f"**Accuracy recipe** (`fashion_common.config.TrainConfig()`): {cfg['optimizer']}, lr {cfg['lr']:g}, "
            f"{cfg['schedule']} schedule, "
            f"weight decay {cfg['weight_decay']:g}, batch {cfg['batch_size']}, label smoothing "
            f"{cfg['label_smoothing']:g}, seed {cfg['seed']}, "
            f"{_epochs(cfg['epochs'])}; matmul precision {training['precision']} in every twin. "
            "Each twin initializes itself from the seed, with the same law (torch's U(±1/√fan_in)) but its own "
            "generator "
            "(torch's vs a JAX key), so torch's run is independent of the JAX twins': their difference is run-to-run "
            "noise, "
            "which the accuracy check bounds when the full training set is used. The identical-init comparison is "
            "the lockstep above.",
            "",
        ]
        if recipe["shortened"]:
            lines += [
                f"> **Shortened:** quick mode trains {_epochs(cfg['epochs'])} instead of the recipe's "
                f"{recipe['default_epochs']}; "
                "everything else is the recipe, and the cosine schedule then decays to 0 over these "
                f"{_epochs(cfg['epochs'])}. "
                f"Run with `--full` for the real recipe.",
                "",
            ]
        if "final_test_accuracy" in recipe:
            acc = recipe["final_test_accuracy"]
            nnx_gap = (
                f", torch − nnx **{recipe['accuracy_diff_pp_nnx']:.2f} pp**" if "accuracy_diff_pp_nnx" in recipe else ""
            )
            lines += [
                "Final test accuracy: "
                + ", ".join(f"{b} **{100 * acc[b]:.2f}%**" for b in BACKENDS if b in acc)
                + f"; difference torch − flax **{recipe['accuracy_diff_pp']:.2f} pp**{nnx_gap}.",
                "",
                *_md_history(recipe),
            ]
        elif "torch" in recipe:
            lines += [f"({', '.join(b for b in BACKENDS if b not in recipe)} twin still training)", ""]
        if have_png("curves.png"):
            smoothing = cfg["label_smoothing"]
            floor = smoothed_loss_floor(smoothing)
            train_loss = (
                f"label-smoothed cross-entropy (smoothing {smoothing:g}), on the augmented training batches; "
                f"it cannot go below {floor:.3f}, the entropy of the smoothed target, reached only by a model that "
                "puts exactly the smoothed probabilities on every image"
                if smoothing
                else "plain cross-entropy on the training batches"
            )
            lines += [
                f"Train loss: {train_loss}. Test loss: plain cross-entropy on the test images (the tutorial's "
                "test_loop), so the two curves measure different things and the gap between them is not overfitting "
                "by itself.",
                "",
                f"![{PLOTS['curves.png']}](curves.png)",
                "",
            ]
        if have_png("epoch_times.png"):
            lines += [
                "Epoch seconds are training only (the evaluation after each epoch is excluded); epoch 1 includes "
                "warm-up and the JAX twins' JIT compilation.",
                "",
                f"![{PLOTS['epoch_times.png']}](epoch_times.png)",
                "",
            ]
    tutorial = training.get("tutorial")
    lines += ["### Tutorial recipe", ""]
    if tutorial is None:
        lines += [
            "Not run in quick mode: `--full` trains the tutorial's own recipe (plain SGD, lr 1e-3, batch 64, 10 "
            "epochs) in every twin for comparison.",
            "",
        ]
    elif "final_test_accuracy" in tutorial:
        cfg, acc = tutorial["config"], tutorial["final_test_accuracy"]
        lines += [
            f"`fashion_common.config.tutorial_config()`: {cfg['optimizer']}, lr {cfg['lr']:g}, {cfg['schedule']}, "
            f"batch {cfg['batch_size']}, {cfg['epochs']} epochs. "
            "Final test accuracy: "
            + ", ".join(f"{b} {100 * acc[b]:.2f}%" for b in BACKENDS if b in acc)
            + f" (difference torch − flax {tutorial['accuracy_diff_pp']:.2f} pp); "
            "dashed in curves.png.",
            "",
            *_md_history(tutorial),
        ]
    else:
        lines += ["(not finished yet)", ""]
    return lines


def _md_classes(classes: dict, lockstep: dict, have_png) -> list[str]:
    names, recipe = classes["class_names"], classes["recipe"]
    twins = [b for b in BACKENDS if b in recipe]
    lines = [
        "## 7. Classes and agreement",
        "",
        f"Each twin's final model of the accuracy recipe predicts all {classes['num_test']:,} test images with its own "
        "`predict_proba` (argmax of the softmax). Per-class accuracy is the share of each true class predicted "
        "correctly.",
        "",
        "| class | " + " | ".join(twins) + " | max Δ pp |",
        "| --- |" + " ---: |" * (len(twins) + 1),
    ]
    for i, name in enumerate(names):
        diff = recipe["per_class_diff_pp"][i]  # the largest gap between two twins
        cells = [_pct(recipe[b]["per_class_accuracy"][i]) for b in twins] + [f"{float(diff):.2f}"]
        cells = cells if _finite(diff) else ["—"] * len(cells)  # —: no test image of this class
        lines.append(f"| {i} {name} | " + " | ".join(cells) + " |")
    lines.append(
        "| **all** | "
        + " | ".join(f"**{_pct(recipe[b]['accuracy'])}**" for b in twins)
        + f" | {float(recipe['accuracy_diff_pp']):.2f} |"
    )
    lines += [
        "",
        "The most frequent confusions (true → predicted, images):",
        "",
        "| true → predicted | " + " | ".join(twins) + " |",
        "| --- |" + " ---: |" * len(twins),
    ]
    for c in recipe["top_confusions"]:
        lines.append(f"| {names[c['true']]} → {names[c['predicted']]} | " + " | ".join(str(c[b]) for b in twins) + " |")
    lines.append("")
    if have_png("confusion.png"):
        lines += [f"![{PLOTS['confusion.png']}](confusion.png)", ""]
    ls = classes.get("lockstep")
    lines += [
        "**Agreement** — for each pair of twins, the share of test images on which the two predict the same class:",
        "",
        "| models | twins | same class | images that differ | both right | accuracy of each |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    runs = [("independently trained (accuracy recipe, each from its own seeded init)", recipe)]
    if ls:
        steps = f"{lockstep['steps']} SGD steps" if "steps" in lockstep else "lockstep"
        runs.append((f"lockstep (one init, one batch order, {steps})", ls))
    for label, entry in runs:
        for pair in _pair_rows(entry):
            a, b = pair["twins"]
            lines.append(
                f"| {label} | {a} – {b} | {_pct(pair['agreement'])} | {pair['disagreements']:,} | "
                f"{_pct(pair['both_right'])} | {a} {_pct(entry[a]['accuracy'])}, {b} {_pct(entry[b]['accuracy'])} |"
            )
    lines += [
        "",
        "Independent trainings reach about the same accuracy but disagree on part of the images they get wrong; "
        "the lockstep twins share their init and every update, so they should disagree on (almost) none. "
        "Agreement measures the twins against each other, accuracy against the labels: the lockstep models are trained "
        "only as long as the lockstep stage runs (the tutorial's plain SGD at lr 1e-3), so they agree fully while "
        "being right on far fewer images than the accuracy recipe.",
        "",
    ]
    return lines


def md_distributed(result: dict) -> list[str]:
    """Section 8 (compare --distributed N): each twin on one device vs N-way data parallel.

    SIMULATED in the title on a CPU.
    """
    n = result["world_size"]
    simulated = f" — SIMULATED devices ({n} on one CPU's cores)" if result["simulated"] else ""
    engines = {
        "torch": f"DDP, torchrun --nproc-per-node {n}",
        "flax": f"jit over Mesh(('data',)), {n} devices",
        "nnx": f"nnx.split state, jit over Mesh(('data',)), {n} devices",
    }
    lines = [
        f"## 8. Data parallel: 1 device vs {n}{simulated}",
        "",
        f"{result['steps']} steps, global batch {result['batch_size']} ({result['per_rank_batch']} per "
        f"rank/device), {result['config']}; "
        f"{result['device']}; torch {result['torch_threads_per_process']} thread per process.",
        "",
        f"_{result['note']}._",
        "",
        "| twin | engine | ms/step, 1 device | ms/step, parallel | max \\|ΔW\\| vs 1 device | ran on (parallel) |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for twin in (t for t in ("torch", "flax", "nnx") if t in result):  # a report from before NNX has no "nnx"
        f = result[twin]
        lines.append(
            f"| {twin} | {engines[twin]} | {f['single_ms_per_step']:.2f} | {f['parallel_ms_per_step']:.2f} | "
            f"{_e(f['max_abs_dW_parallel_vs_single'])} | {_cell(f.get('parallel_device', ''))} |"
        )
    lines += [
        "",
        f"torch DDP vs flax sharded: max \\|ΔW\\| {_e(result['max_abs_dW_torch_ddp_vs_flax_sharded'])} "
        f"(single-device torch vs flax: {_e(result['max_abs_dW_torch_single_vs_flax_single'])})"
        + (
            f"; torch DDP vs nnx sharded: {_e(result['max_abs_dW_torch_ddp_vs_nnx_sharded'])}, "
            f"flax vs nnx sharded: {_e(result['max_abs_dW_flax_sharded_vs_nnx_sharded'])}. "
            if "nnx" in result
            else ". "
        )
        + "Per-step times are the second epoch's (the first pays compilation and DDP's setup).",
        "",
    ]
    return lines


def _finite(x) -> bool:
    """A JSON number that is finite ("nan" and "inf" arrive as strings)."""
    return math.isfinite(float(x))
