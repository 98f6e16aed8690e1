"""Text both twins print: the summary table and the per-epoch log line, built in one place."""

from __future__ import annotations


def format_summary_rows(rows) -> str:
    """Rows of (path, type, output shape, params) -> a fixed-width table with a total."""
    lines = [f"{'layer':<28} {'type':<10} {'output shape':<14} {'params':>9}"]
    lines += [f"{path:<28} {kind:<10} {str(tuple(shape)):<14} {n:>9,}" for path, kind, shape, n in rows]
    lines.append(f"{'total':<28} {'':<10} {'':<14} {sum(r[3] for r in rows):>9,}")
    return "\n".join(lines)


def format_epoch_line(backend: str, epoch: int, epochs: int, metrics: dict) -> str:
    """One line per epoch, identical in form for both twins so their logs diff and plot together."""
    return (
        f"[{backend}] epoch {epoch:>3}/{epochs}  train_loss {metrics['train_loss']:.4f}  "
        f"test_loss {metrics['test_loss']:.4f}  test_acc {100 * metrics['test_accuracy']:.2f}%  "
        f"time {metrics['epoch_seconds']:.2f}s"
    )


def format_eval_line(backend: str, metrics: dict, num_images: int, checkpoint) -> str:
    """The evaluate script's one line; numbers formatted as in the epoch line."""
    return (
        f"[{backend}] test_loss {metrics['test_loss']:.4f}  test_acc {100 * metrics['test_accuracy']:.2f}%  "
        f"({num_images} images, checkpoint {checkpoint})"
    )


def format_prediction(
    backend: str, name: str, probs, top: int = 3, true_label=None, class_names=None, low_confidence: bool = False
) -> str:
    """One line per image: `[torch] shoe.png  pred Sneaker  top-3: Sneaker 91.20%, Sandal 6.02%, Ankle boot 2.11%`.

    `probs` is one softmax row (10,); ties keep label order (Python's sort is stable), so both
    twins list equal probabilities the same way. `true_label` (an int) adds `true <name>`;
    `low_confidence` adds `low confidence` before the list.
    """
    from .spec import CLASS_NAMES

    names = CLASS_NAMES if class_names is None else class_names
    probs = [float(p) for p in probs]
    ranked = sorted(range(len(probs)), key=lambda i: -probs[i])[:top]
    truth = "" if true_label is None else f"  true {names[int(true_label)]}"
    listed = ", ".join(f"{names[i]} {100 * probs[i]:.2f}%" for i in ranked)
    low = "  low confidence" if low_confidence else ""
    return f"[{backend}] {name}  pred {names[ranked[0]]}{truth}{low}  top-{len(ranked)}: {listed}"
