"""The report's PNGs, drawn from the report dict (matplotlib, Agg canvas, no pyplot state).

Each function returns PNG bytes.
"""

from __future__ import annotations

import io

import numpy as np

from fashion_common.spec import BACKENDS

PLOTS = {  # file -> what it shows, also the alt text in report.md
    "lockstep.png": "lockstep: running maximum of the |loss diff| and of the max weight diff, torch vs flax and "
    "vs nnx, and the steps where the losses are exactly equal",
    "curves.png": "train and test loss, and test accuracy per epoch, every twin",
    "epoch_times.png": "seconds per epoch, every twin",
    "confusion.png": "confusion matrices of every twin on the test set, and each pair's difference",
}
LOG_FLOOR = 1e-12  # exact zeros cannot be drawn on a log axis; they are drawn at this floor instead

TWIN_STYLE = {  # the twins overlap almost exactly: torch drawn wide, flax narrower on top, nnx thinnest
    "torch": {"color": "tab:red", "marker": "o", "linewidth": 3.0, "markersize": 8, "alpha": 0.55},
    "flax": {"color": "tab:blue", "marker": "x", "linewidth": 1.6, "markersize": 7},
    "nnx": {"color": "tab:green", "marker": "+", "linewidth": 1.0, "markersize": 9},
}
# lockstep: torch vs this JAX twin. The two lines coincide (nnx is bit-equal to linen), so flax is drawn wide
# and pale, nnx thin and dashed on top: both stay visible.
PAIR_STYLE = {
    "flax": {"color": "tab:blue", "linewidth": 3.5, "alpha": 0.45},
    "nnx": {"color": "tab:green", "linewidth": 1.4, "linestyle": "--"},
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


def plot_lockstep(results: dict) -> bytes:
    """lockstep_figure as PNG bytes."""
    return _png(lockstep_figure(results))


def lockstep_figure(results: dict):
    """Two log-scale panels: |loss diff| at every step, the max weight diff at the recorded steps; one line per pair.

    results: JAX twin ("flax", "nnx") -> lockstep() result of torch against it (a bare result: torch vs flax).
    """
    from matplotlib.ticker import MaxNLocator

    if "loss_diff" in results:
        results = {results.get("twin", "flax"): results}
    fig = _figure(9, 7.5)
    ax_loss, ax_w = fig.subplots(2, 1, sharex=True)
    top, zeros, w_zeros = 0.0, [], []
    twins = list(results)
    for twin, result in results.items():
        loss_diff = np.asarray(result["loss_diff"], dtype=np.float64)
        steps = np.arange(1, len(loss_diff) + 1)
        w_steps = np.asarray(result["weight_steps"])
        w_diff = np.asarray(result["weight_diff"], dtype=np.float64)
        zeros.append(f"{twin} {int((loss_diff == 0).sum())}")
        w_zeros.append(f"{twin} {int((w_diff == 0).sum())}")
        style = PAIR_STYLE.get(twin, {"color": "tab:purple", "linewidth": 1.6})
        # The running maximum (largest difference so far) reads as a bound; per-step values alternate between 0 and
        # ~1e-8 and drew a comb that hid it.
        ax_loss.step(
            steps,
            np.maximum(np.maximum.accumulate(loss_diff) if len(loss_diff) else loss_diff, LOG_FLOOR),
            where="post",
            **style,
            label=f"running max of |loss torch - loss {twin}|",
        )
        ax_w.step(
            w_steps,
            np.maximum(np.maximum.accumulate(w_diff) if len(w_diff) else w_diff, LOG_FLOOR),
            where="post",
            **style,
            marker="o",
            markersize=3,
            label=f"running max of max |W torch - W {twin}|, all tensors",
        )
        # The steps whose |loss diff| is exactly 0 sit under the running maximum, out of sight: a tick for each,
        # in a band of its own under the floor line, one row per pair.
        row = LOG_FLOOR / 2.5 ** (1 + twins.index(twin))
        exact = steps[loss_diff == 0]
        ax_loss.plot(
            exact,
            np.full(len(exact), row),
            linestyle="none",
            marker="|",
            markersize=6,
            color=style["color"],
            label=f"a step where loss {twin} = loss torch exactly ({len(exact)} of {len(loss_diff)})",
        )
        top = max(top, float(np.max(loss_diff, initial=0)), float(np.max(w_diff, initial=0)))
    result = next(iter(results.values()))
    ax_loss.set_title(
        f"|loss diff|, running maximum over the steps (steps exactly 0 of {result['steps']}: {', '.join(zeros)})",
        fontsize=10,
    )
    ax_loss.set_ylabel("max |loss diff| so far")
    every = result.get("weight_every", 1)
    when = "after every step" if every == 1 else f"every {every} steps"
    ax_w.set_title(
        f"max weight diff {when}, running maximum (step 0 is the shared init; exact zeros: {', '.join(w_zeros)})",
        fontsize=10,
    )
    ax_w.set_ylabel("max |weight diff| so far")
    ax_w.set_xlabel("SGD step")
    ax_w.xaxis.set_major_locator(MaxNLocator(integer=True))
    tol = result["tolerance"]
    top = max(top, tol)
    for ax in (ax_loss, ax_w):
        ax.set_yscale("log")
        ax.set_ylim(LOG_FLOOR / 2.5 ** (len(twins) + 1), top * 20)
        ax.axhline(tol, color="gray", linestyle="--", linewidth=1, label=f"tolerance {tol:g}")
        ax.axhline(LOG_FLOOR, color="lightgray", linestyle=":", linewidth=1, label=f"floor {LOG_FLOOR:g} (= exactly 0)")
        ax.grid(True, which="major", alpha=0.3)
    if coinciding_pairs(results):  # said in words: two lines drawn exactly on top of each other read as one
        ax_loss.text(
            0.99,
            0.97,
            f"torch vs {' and vs '.join(twins)}: the lines coincide (the JAX twins' losses and weights are equal)",
            transform=ax_loss.transAxes,
            ha="right",
            va="top",
            fontsize=8,
            bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "lightgray"},
        )
    # Below the axes, never over the first steps, where the only rise is
    handles, labels = ax_loss.get_legend_handles_labels()
    w_handles, w_labels = ax_w.get_legend_handles_labels()
    keep = [(h, lab) for h, lab in zip(w_handles, w_labels, strict=True) if lab not in labels]
    fig.legend(
        handles + [h for h, _ in keep],
        labels + [lab for _, lab in keep],
        loc="outside lower center",
        ncols=2,
        fontsize=8,
    )
    cfg = result["config"]
    fig.suptitle(
        f"Lockstep: torch vs {' and vs '.join(results)}, tutorial SGD (lr {cfg['lr']:g}, batch {cfg['batch_size']}), "
        f"{result['steps']} steps, {result['precision']} precision"
    )
    return fig


def coinciding_pairs(results: dict) -> bool:
    """True when every pair's loss diffs and weight diffs are identical: their lines lie exactly on one another."""
    series = [(list(r["loss_diff"]), list(r["weight_diff"])) for r in results.values()]
    return len(series) > 1 and all(other == series[0] for other in series[1:])


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _min_span(ax, span: float) -> None:
    """Widen the y range to at least `span`.

    Rounding-size differences between the twins are then not blown up to full height.
    """
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


def smoothed_loss_floor(smoothing: float, classes: int = 10) -> float:
    """The lowest label-smoothed cross-entropy any model can reach: the entropy of the smoothed target.

    torch's label_smoothing=s (and optax.smooth_labels) puts 1 - s + s/K on the true class and s/K on each
    other: for s = 0.1, K = 10, -0.91 ln 0.91 - 9 (0.01 ln 0.01) = 0.500. 0 for plain cross-entropy.
    """
    if smoothing <= 0:
        return 0.0
    true, other = 1 - smoothing + smoothing / classes, smoothing / classes
    return float(-true * np.log(true) - (classes - 1) * other * np.log(other))


def plot_curves(training: dict) -> bytes:
    """Train loss, test loss and test accuracy per epoch, both twins overlaid (the tutorial recipe dashed, when run)."""
    fig = _figure(15, 4.8)
    ax_train, ax_test, ax_acc = fig.subplots(1, 3)
    for name, label, linestyle in _runs(training):
        for backend in BACKENDS:
            hist = training[name][backend]["epochs"]
            epochs = [r["epoch"] for r in hist]
            style = {**TWIN_STYLE[backend], "linestyle": linestyle}
            ax_train.plot(epochs, [r["train_loss"] for r in hist], label=f"{backend}, {label}", **style)
            ax_test.plot(epochs, [r["test_loss"] for r in hist], label=f"{backend}, {label}", **style)
            ax_acc.plot(epochs, [100 * r["test_accuracy"] for r in hist], label=f"{backend}, {label}", **style)
    smoothing = training["recipe"]["config"]["label_smoothing"]
    if smoothing:
        floor = smoothed_loss_floor(smoothing)
        ax_train.axhline(floor, color="gray", linestyle=":", linewidth=1.2, label=f"floor {floor:.3f} (recipe)")
        ax_train.set_title(
            f"train loss: label-smoothed cross-entropy (smoothing {smoothing:g})\n"
            f"mean over the epoch's augmented batches; cannot go below {floor:.3f}",
            fontsize=10,
        )
    else:
        ax_train.set_title("train loss: cross-entropy\nmean over the epoch's batches", fontsize=10)
    ax_train.set_ylabel("train loss")
    ax_test.set_title("test loss: plain cross-entropy\n(no smoothing), after each epoch", fontsize=10)
    ax_test.set_ylabel("test loss")
    ax_acc.set_title("test accuracy\nafter each epoch", fontsize=10)
    ax_acc.set_ylabel("test accuracy (%)")
    all_epochs = [r["epoch"] for name, _, _ in _runs(training) for r in training[name]["torch"]["epochs"]]
    for ax in (ax_train, ax_test, ax_acc):
        _epoch_axis(ax, all_epochs)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if smoothing:  # keep the floor in view: the distance to it is what the train loss can still lose
        low, high = ax_train.get_ylim()
        ax_train.set_ylim(min(low, smoothed_loss_floor(smoothing) - 0.02), high)
    _min_span(ax_train, 0.05)  # cross-entropy units
    _min_span(ax_test, 0.05)
    _min_span(ax_acc, 2.0)  # percentage points
    recipe = training["recipe"]
    cfg = recipe["config"]
    shortened = (
        f", shortened from {recipe['default_epochs']} (cosine over {_epochs(cfg['epochs'])})"
        if recipe["shortened"]
        else ""
    )
    title = (
        f"Accuracy recipe ({cfg['optimizer']}, lr {cfg['lr']:g}, {cfg['schedule']}, batch {cfg['batch_size']}): "
        f"{_epochs(cfg['epochs'])}{shortened}"
    )
    if len(_runs(training)) > 1:
        tut = training["tutorial"]["config"]
        title += (
            f"\ndashed: tutorial recipe ({tut['optimizer']}, lr {tut['lr']:g}, {tut['schedule']}, "
            f"batch {tut['batch_size']}, plain cross-entropy): {_epochs(tut['epochs'])}"
        )
    fig.suptitle(title)
    return _png(fig)


def plot_epoch_times(training: dict) -> bytes:
    """epoch_times_figure as PNG bytes."""
    return _png(epoch_times_figure(training))


def epoch_times_figure(training: dict):
    """Seconds per epoch of the accuracy recipe, one bar per twin for each epoch; the busy warning inside when busy."""
    fig = _figure(max(6.5, 0.55 * len(training["recipe"]["torch"]["epochs"]) + 3), 4.6)
    ax = fig.subplots()
    hist = {b: training["recipe"][b]["epochs"] for b in BACKENDS}
    epochs = np.array([r["epoch"] for r in hist["torch"]])
    width = 0.8 / len(BACKENDS)
    offsets = (np.arange(len(BACKENDS)) - (len(BACKENDS) - 1) / 2) * width  # bars side by side around each epoch
    for offset, backend in zip(offsets, BACKENDS, strict=True):
        seconds = [r["epoch_seconds"] for r in hist[backend]]
        bars = ax.bar(
            epochs + offset,
            seconds,
            width,
            color=TWIN_STYLE[backend]["color"],
            label=f"{backend} ({steady_median_text(seconds)})",
        )
        if len(epochs) <= 6:
            ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    _epoch_axis(ax, epochs.tolist())
    ax.set_ylabel("training seconds (evaluation excluded)")
    ax.set_ylim(0, max(r["epoch_seconds"] for b in BACKENDS for r in hist[b]) * 1.15)
    ax.grid(True, axis="y", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=1, fontsize=9)  # below the axes: never over a bar or its label
    cfg = training["recipe"]["config"]
    ax.set_title(
        f"Accuracy recipe: seconds per epoch (batch {cfg['batch_size']}, {_epochs(len(epochs))})"
        "\nepoch 1 includes warm-up and the JAX twins' JIT compilation",
        fontsize=10,
    )
    warning = busy_text(training["recipe"].get("machine"))
    if warning:  # inside the picture: the PNG travels without report.md
        ax.text(
            0.5,
            0.97,
            warning,
            transform=ax.transAxes,
            ha="center",
            va="top",
            fontsize=9,
            color="darkred",
            bbox={"facecolor": "mistyrose", "alpha": 0.9, "edgecolor": "darkred"},
        )
        ax.set_ylim(0, ax.get_ylim()[1] * 1.25)  # room for the box above the bars
    return fig


def steady_median_text(seconds) -> str:
    """The legend's median: of epochs 2 on, as epoch 1 pays warm-up and compilation; epoch 1 alone when it is all."""
    if len(seconds) < 2:
        return f"epoch 1 {seconds[0]:.2f} s" if seconds else "no epochs"
    return f"median {np.median(seconds[1:]):.2f} s over epochs 2-{len(seconds)}, epoch 1 {seconds[0]:.2f} s"


def busy_text(span: dict | None) -> str | None:
    """The busy warning for a figure, with what other processes took; None for a quiet or unrecorded run."""
    from fashion_common.runtime import BUSY_WARNING

    if not span or not span.get("busy"):
        return None
    share = span.get("others_cpu_share")
    why = "load average above the usable cores" if share is None else f"other processes took {share:.0%} of the cores"
    return f"⚠ {BUSY_WARNING}\n({why})"


def plot_confusion(entry: dict, class_names, subtitle: str) -> bytes:
    """confusion_figure as PNG bytes."""
    return _png(confusion_figure(entry, class_names, subtitle))


def confusion_figure(entry: dict, class_names, subtitle: str):
    """Each twin's confusion matrix (top row), and each pair's difference (bottom row): counts in the cells, 2 x 3.

    The twins' panels: colour = share of the true class on one shared scale. A pair's panel (a − b): the cells show
    a's count minus b's; the colour says which twin did worse there, with one meaning on and off the diagonal: red
    where a does worse (fewer images right on the diagonal, more images wrong off it), blue where b does, white where
    equal. entry: {"torch": {"confusion": (10, 10) rows true / columns predicted, "accuracy"}, "flax": {...},
    "nnx": {...}, "agreement" (torch–flax), "pairs" (every pair's agreement)}.
    """
    from matplotlib.colors import PowerNorm, TwoSlopeNorm

    n = len(class_names)
    twins = len(BACKENDS)
    pairs = [(a, b) for i, a in enumerate(BACKENDS) for b in BACKENDS[i + 1 :]]  # torch–flax, torch–nnx, flax–nnx
    fig = _figure(7 * max(twins, len(pairs)), 14)
    grid = fig.subplots(2, max(twins, len(pairs)))
    twin_axes, pair_axes = list(grid[0][:twins]), list(grid[1][: len(pairs)])
    # sqrt scale: a diagonal of ~90% and confusions of 1-15% are both legible on one scale
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=100.0)
    counts = {b: np.asarray(entry[b]["confusion"], dtype=np.int64) for b in BACKENDS}  # (10, 10) each
    for ax, backend in zip(twin_axes, BACKENDS, strict=True):
        rows = counts[backend].sum(axis=1, keepdims=True)  # (10, 1) images of each true class
        share = 100.0 * counts[backend] / np.maximum(rows, 1)  # (10, 10) percent of the true class
        image = ax.imshow(share, cmap="Blues", norm=norm)
        for i in range(n):
            for j in range(n):
                if counts[backend][i, j] or i == j:  # an empty cell is 0; on the diagonal the 0 is written out
                    dark = share[i, j] > 45  # white text where the cell is dark
                    ax.text(
                        j,
                        i,
                        str(counts[backend][i, j]),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if dark else "black",
                    )
        ax.set_title(f"{backend} twin: test accuracy {100 * entry[backend]['accuracy']:.2f}%", fontsize=11)
    diffs = {pair: counts[pair[0]] - counts[pair[1]] for pair in pairs}  # (10, 10) signed, a − b
    limit = max(1, max(int(np.abs(d).max()) for d in diffs.values()))  # one colour scale for every pair
    worse_norm = TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)
    for ax, (a, b) in zip(pair_axes, pairs, strict=True):
        diff = diffs[(a, b)]
        worse = np.where(np.eye(n, dtype=bool), -diff, diff)  # > 0 where a does worse: fewer right, more wrong
        shown = ax.imshow(worse, cmap="RdBu_r", norm=worse_norm)
        for i in range(n):
            for j in range(n):
                if diff[i, j]:
                    strong = abs(diff[i, j]) > 0.6 * limit
                    ax.text(
                        j,
                        i,
                        f"{diff[i, j]:+d}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if strong else "black",
                    )
        changed = int(np.abs(diff).sum())
        ax.set_title(f"{a} − {b} (image counts; blank = equal; sum of |Δ| {changed})", fontsize=11)
    for ax in twin_axes + pair_axes:
        ax.set_xticks(range(n), class_names, rotation=40, ha="right", fontsize=9)
        ax.set_yticks(range(n), class_names, fontsize=9)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
    for ax in list(grid[0][twins:]) + list(grid[1][len(pairs) :]):
        ax.set_axis_off()
    bar = fig.colorbar(image, ax=twin_axes, shrink=0.8, ticks=[0, 1, 5, 10, 25, 50, 75, 100], location="right")
    bar.set_label("share of the true class (%), cells show image counts")
    diff_bar = fig.colorbar(shown, ax=pair_axes, shrink=0.8, location="right")
    diff_bar.set_label(
        "red: the first twin does worse in the cell, blue: the second does\n"
        "(on the diagonal fewer images right, off it more images wrong)"
    )
    pairs_seen = entry.get("pairs") or [{"twins": ["torch", "flax"], "agreement": entry["agreement"]}]
    same = ", ".join(f"{p['twins'][0]}–{p['twins'][1]} {100 * p['agreement']:.2f}%" for p in pairs_seen)
    fig.suptitle(f"Confusion matrices, {subtitle}\nthe same class predicted on the test images: {same}")
    return fig
