"""fashion-twins benchmark: the speed of one training epoch, side by side in one run: the tutorial's loop,
every twin, the FLOP floor.

    fashion-twins benchmark [--device auto|cpu|gpu] [--precision highest|tf32|both] [--repeats 3]
                            [--out bench.json] [--time-to-accuracy]

Prints a markdown table and JSON (one object per precision mode). Times are medians of
--repeats epochs after one warm-up epoch that also pays for compilation.
"""

from __future__ import annotations

import json

from fashion_common.config import RECIPES
from fashion_common.spec import BACKENDS

from . import common

# fashion_compare.benchmark names the modes by what they are in the tables: "fp32" is "highest".
BENCHMARK_MODE = {"highest": "fp32", "tf32": "tf32"}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "benchmark",
        help="seconds per training epoch: the tutorial loop, every twin, the FLOP floor",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        parents=[
            common.data_parent(),
            common.device_parent(),
            common.precision_parent(None, "highest on a CPU, both on a GPU"),
            common.threads_parent(),
        ],
    )
    p.add_argument(
        "--repeats",
        type=common.positive_int,
        metavar="N",
        default=3,
        help="timed epochs per variant, median reported (default: 3)",
    )
    p.add_argument(
        "--tutorial-repeats",
        type=common.positive_int,
        metavar="N",
        default=None,
        help="timed epochs for the slow tutorial loop (default: same as --repeats)",
    )
    p.add_argument(
        "--time-to-accuracy",
        action="store_true",
        help="also time each twin to 89%% test accuracy with --recipe, and its ratio to the twin's own "
        "plain-SGD epoch of this run (default: off)",
    )
    p.add_argument(
        "--recipe",
        choices=("fast", "default"),
        default="fast",
        help="the recipe --time-to-accuracy trains: fast (fashion_common.config.fast_config) or default, the "
        "80-epoch accuracy recipe (default: fast)",
    )
    p.add_argument(
        "--limit-train",
        type=common.positive_int,
        metavar="N",
        default=None,
        help="time epochs of the first N training images only, for a quick rehearsal (default: all 60,000)",
    )
    p.add_argument(
        "--limit-test",
        type=common.positive_int,
        metavar="N",
        default=None,
        help="evaluate --time-to-accuracy on the first N test images only (default: all 10,000)",
    )
    p.add_argument("--out", metavar="JSON", default=None, help="also write the results here (default: none)")
    common.add_quiet(p, "no progress lines on stderr (one per variant as it is timed); the tables still go to stdout")
    p.set_defaults(run=run)


def run(args) -> int:
    common.require_every_twin()  # a missing framework: one line naming [all], before any output
    from fashion_common.paths import check_no_aliases, check_output_file

    check_no_aliases({"--out": args.out}, {"--data-dir": args.data_dir})
    check_output_file(args.out, "--out")
    from fashion_common.data import load_fashion_mnist
    from fashion_compare import benchmark

    log = (lambda line: None) if args.quiet else common.note
    device = benchmark.pick_device(args.device)
    modes = common.precisions(args.precision or ("both" if device == "gpu" else "highest"))
    if device == "cpu" and modes != ["highest"]:
        raise common.UsageError(
            "argument --precision: the CPU has only highest (fp32) matmuls; use --precision highest"
        )
    data = load_fashion_mnist(args.data_dir, download=args.download).limit(args.limit_train, args.limit_test)
    results = [
        benchmark.benchmark(
            data, device, BENCHMARK_MODE[m], args.repeats, args.tutorial_repeats, args.data_dir, log=log
        )
        for m in modes
    ]
    report = {"results": results}
    if args.time_to_accuracy:
        benchmark.set_precision(BENCHMARK_MODE["highest"])
        recipe = RECIPES[args.recipe](device=device)
        report["time_to_accuracy"] = [
            benchmark.time_to_accuracy(b, data, device, config=recipe, log=log) for b in BACKENDS
        ]
        benchmark.add_plain_epoch_ratios(report["time_to_accuracy"], results[0], args.recipe)
    print(benchmark.markdown_table(results))
    if args.time_to_accuracy:
        print()
        print(benchmark.markdown_time_to_accuracy(report["time_to_accuracy"]))
    print(
        json.dumps(
            [{k: v for k, v in r.items() if not k.endswith("_times") and k != "matmul_flops"} for r in results],
            indent=2,
        )
    )
    if args.out:
        from fashion_common.loop import write_json_atomic

        write_json_atomic(args.out, report)
        print(f"[benchmark] wrote {args.out}")
    return 0
