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
