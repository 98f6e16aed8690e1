"""Recipe runs: one training per call, logged and summarized under runs/.

    python3 -m fashion_compare.sweep --backend flax --name base --set val_size=5000 epochs=50
    python3 -m fashion_compare.sweep --summary runs/sweep   # a markdown table of every run's metrics

A run is the twin's own train_and_evaluate with TrainConfig() plus the --set overrides; it writes
NAME.safetensors and NAME.metrics.json into --out-dir. The torch twin trains through its default
engine (autograd + torch.optim; eager on the CPU). Selection is by the
validation split (val_size > 0); the test accuracy of the written checkpoint is measured
separately, with `fashion-twins evaluate`.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import sys
from pathlib import Path

from fashion_common.config import TrainConfig
from fashion_common.data import load_fashion_mnist
from fashion_common.spec import BACKENDS


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


def run(backend: str, name: str, overrides: dict, out_dir: Path, torch_threads: int = 1) -> dict:
    """Train one configuration; returns the metrics dict (also written to out_dir/NAME.metrics.json)."""
    config = TrainConfig().replace(**{"device": "cpu", **overrides})
    if backend == "torch":
        import torch

        import fashion_torch.train as train

        # On a shared, oversubscribed CPU torch's OpenMP workers spin at every barrier: an epoch measured
        # 209 s with 2 threads at load 9 (3.8 s on a quiet box). One thread avoids the barriers.
        torch.set_num_threads(torch_threads)
    else:  # flax or nnx: each JAX twin's own loop (the choices are spec.BACKENDS)
        train = importlib.import_module(f"fashion_{backend}.train")
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_fashion_mnist()
    _, metrics = train.train_and_evaluate(
        config,
        data,
        out=str(out_dir / f"{name}.safetensors"),
        metrics_path=str(out_dir / f"{name}.metrics.json"),
        quiet=True,
        log=lambda line: print(line, flush=True),
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
    rows = [
        "| run | twin | shift | batch | lr | wd | ls | epochs | val acc (last) | val acc (best, epoch) | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
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
            f"| {path.name[: -len('.metrics.json')]}{done} | {m['backend']} | {c.get('augment_shift', 0)} | "
            f"{c['batch_size']} | {c['lr']:g} | {c['weight_decay']:g} "
            f"| {c['label_smoothing']:g} | {c['epochs']} | {val} | {seconds:.0f} |"
        )
    return "\n".join(rows)


def final_table(folder: Path) -> str:
    """Markdown rows for the final runs: test accuracy from NAME.eval.txt (fashion-twins evaluate's line on the
    written checkpoint), time to 89 % and total training time from NAME.metrics.json; then mean and spread per twin."""
    import re
    import statistics

    rows = [
        "| run | twin | seed | test acc (evaluate.py, checkpoint) | last-epoch test acc (loop) "
        "| time to 89 % (s, epoch) | training time (s) | mean s/epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    per_twin = {}
    for path in sorted(folder.glob("*.metrics.json")):
        name = path.name[: -len(".metrics.json")]
        m = json.loads(path.read_text())
        h = m["epochs"]
        eval_file = folder / f"{name}.eval.txt"
        found = re.search(r"test_acc ([0-9.]+)%", eval_file.read_text()) if eval_file.is_file() else None
        acc = float(found.group(1)) if found else None
        if acc is not None and len(h) == m["config"]["epochs"]:
            per_twin.setdefault(m["backend"], []).append(acc)
        t89 = time_to(h, 0.89)
        e89 = next((r["epoch"] for r in h if r["test_accuracy"] >= 0.89), None)
        seconds = sum(r["epoch_seconds"] for r in h)
        done = "" if len(h) == m["config"]["epochs"] else f" ({len(h)}/{m['config']['epochs']} epochs, unfinished)"
        rows.append(
            f"| {name}{done} | {m['backend']} | {m['config']['seed']} | {'-' if acc is None else f'{acc:.2f} %'} | "
            f"{100 * h[-1]['test_accuracy']:.2f} % "
            f"| {'-' if t89 is None else f'{t89:.0f} ({e89})'} | {seconds:.0f} | {seconds / len(h):.1f} |"
        )
    rows += ["", "| twin | seeds | mean test acc | min | max | spread (max - min) |", "|---|---|---|---|---|---|"]
    for backend, accs in sorted(per_twin.items()):
        rows.append(
            f"| {backend} | {len(accs)} | {statistics.mean(accs):.2f} % | {min(accs):.2f} % | {max(accs):.2f} % | "
            f"{max(accs) - min(accs):.2f} pp |"
        )
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=BACKENDS, default="flax", help="twin to train (default flax)")
    parser.add_argument("--name", help="run name: files NAME.safetensors and NAME.metrics.json")
    parser.add_argument(
        "--out-dir", type=Path, default=Path("runs/sweep"), help="folder for the run's files (default runs/sweep)"
    )
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig overrides (default none)"
    )
    parser.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads (default 1: see run())")
    parser.add_argument("--summary", type=Path, help="print a markdown table of the runs in this folder and exit")
    parser.add_argument(
        "--final-table",
        type=Path,
        help="print the final-runs table (needs NAME.eval.txt beside each checkpoint) and exit",
    )
    args = parser.parse_args(argv)
    if args.final_table is not None:
        print(final_table(args.final_table))
        return 0
    if args.summary is not None:
        print(summary(args.summary))
        return 0
    if not args.name:
        parser.error("--name is required to train")
    run(args.backend, args.name, parse_overrides(args.set), args.out_dir, args.torch_threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
