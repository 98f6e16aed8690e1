"""Speed of one training epoch, side by side in one run: the tutorial's loop, both twins, the FLOP floor.

    python scripts/benchmark.py [--device auto|cpu|gpu] [--repeats 3] [--out bench.json] [--time-to-accuracy]

Prints a markdown table and JSON (one object per precision mode: fp32, and tf32 on a GPU).
Times are medians of --repeats epochs after one warm-up epoch that also pays for compilation.
"""

from __future__ import annotations

import argparse
import json

import _cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="auto: a GPU if torch and JAX see one (default: auto)")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per variant, median reported (default: 3)")
    p.add_argument("--tutorial-repeats", type=int, default=None, help="timed epochs for the slow tutorial loop (default: same as --repeats)")
    p.add_argument("--precision", choices=("fp32", "tf32", "both"), default=None, help="matmul precision (default: fp32 on CPU, both on GPU)")
    p.add_argument("--time-to-accuracy", action="store_true", help="also time each twin to 89%% test accuracy with the default recipe (default: off)")
    p.add_argument("--out", metavar="JSON", default=None, help="also write the results here (default: none)")
    _cli.add_data_arguments(p)
    return p


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    if args.repeats < 1:
        raise ValueError("--repeats must be >= 1")
    if args.out:
        _cli.check_output_path(args.out, "--out")
    from fashion_common.data import load_fashion_mnist
    from fashion_compare import benchmark

    device = benchmark.pick_device(args.device)
    precisions = {"fp32": ["fp32"], "tf32": ["tf32"], "both": ["fp32", "tf32"], None: ["fp32", "tf32"] if device == "gpu" else ["fp32"]}[args.precision]
    if device == "cpu" and precisions != ["fp32"]:
        raise ValueError("the CPU has only fp32 matmuls; use --precision fp32")
    data = load_fashion_mnist(args.data_dir, download=args.download)
    results = [benchmark.benchmark(data, device, p, args.repeats, args.tutorial_repeats, args.data_dir, log=_log) for p in precisions]
    report = {"results": results}
    if args.time_to_accuracy:
        benchmark.set_precision("fp32")
        report["time_to_accuracy"] = [benchmark.time_to_accuracy(b, data, device, log=_log) for b in ("torch", "flax")]
    print(benchmark.markdown_table(results))
    if args.time_to_accuracy:
        print()
        print(benchmark.markdown_time_to_accuracy(report["time_to_accuracy"]))
    print(json.dumps([{k: v for k, v in r.items() if not k.endswith("_times") and k != "matmul_flops"} for r in results], indent=2))
    if args.out:
        from fashion_common.loop import write_json_atomic

        write_json_atomic(args.out, report)
    return 0


def _log(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    _cli.main_wrapper(main)
