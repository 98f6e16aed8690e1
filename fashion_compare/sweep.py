"""Recipe runs for issue 10: one training per call, logged and summarized under runs/.

    python3 -m fashion_compare.sweep --backend flax --name base --set val_size=5000 epochs=50
    python3 -m fashion_compare.sweep --summary runs/sweep   # a markdown table of every run's metrics

A run is the twin's own train_and_evaluate with TrainConfig() plus the --set overrides; it writes
NAME.safetensors and NAME.metrics.json into --out-dir. The torch twin trains through
autograd_train_step (fashion_torch.train.FUSED = False), the recipe's path. Selection is by the
validation split (val_size > 0); the test accuracy of the written checkpoint is measured
separately, with scripts/evaluate.py.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

from fashion_common.config import TrainConfig
from fashion_common.data import load_fashion_mnist


def parse_overrides(pairs) -> dict:
    """["lr=5e-4", "epochs=50"] -> {"lr": 0.0005, "epochs": 50}; values are Python literals, else strings."""
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def run(backend: str, name: str, overrides: dict, out_dir: Path) -> dict:
    """Train one configuration; returns the metrics dict (also written to out_dir/NAME.metrics.json)."""
    config = TrainConfig().replace(**{"device": "cpu", **overrides})
    if backend == "torch":
        import fashion_torch.train as train

        train.FUSED = False
    else:
        import fashion_flax.train as train
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_fashion_mnist()
    _, metrics = train.train_and_evaluate(
        config, data, out=str(out_dir / f"{name}.safetensors"), metrics_path=str(out_dir / f"{name}.metrics.json"), quiet=True, log=lambda line: print(line, flush=True)
    )
    return metrics


def time_to(history, accuracy: float, key: str = "test_accuracy"):
    """Training seconds (evaluation excluded) until the first epoch at or above `accuracy`; None if never."""
    total = 0.0
    for row in history:
        total += row["epoch_seconds"]
        if row[key] >= accuracy:
            return total
    return None


def summary(folder: Path) -> str:
    """One markdown row per NAME.metrics.json: the recipe's knobs, best and last validation accuracy, time."""
    rows = ["| run | twin | shift | batch | lr | wd | ls | epochs | val acc (last) | val acc (best, epoch) | train s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(folder.glob("*.metrics.json")):
        m = json.loads(path.read_text())
        c, h = m["config"], m["epochs"]
        if not h:
            continue
        seconds = sum(r["epoch_seconds"] for r in h)
        if "val_accuracy" in h[-1]:
            best = max(h, key=lambda r: r["val_accuracy"])
            val = f"{100 * h[-1]['val_accuracy']:.2f} | {100 * best['val_accuracy']:.2f} ({best['epoch']})"
        else:
            val = "- | -"
        done = "" if len(h) == c["epochs"] else f" ({len(h)}/{c['epochs']} done)"
        rows.append(
            f"| {path.name[:-len('.metrics.json')]}{done} | {m['backend']} | {c.get('augment_shift', 0)} | {c['batch_size']} | {c['lr']:g} | {c['weight_decay']:g} "
            f"| {c['label_smoothing']:g} | {c['epochs']} | {val} | {seconds:.0f} |"
        )
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("torch", "flax"), default="flax", help="twin to train (default flax)")
    parser.add_argument("--name", help="run name: files NAME.safetensors and NAME.metrics.json")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/sweep"), help="folder for the run's files (default runs/sweep)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig overrides (default none)")
    parser.add_argument("--summary", type=Path, help="print a markdown table of the runs in this folder and exit")
    args = parser.parse_args(argv)
    if args.summary is not None:
        print(summary(args.summary))
        return 0
    if not args.name:
        parser.error("--name is required to train")
    run(args.backend, args.name, parse_overrides(args.set), args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
