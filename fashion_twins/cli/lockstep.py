"""fashion-twins lockstep: train torch and a JAX twin in lockstep and print how far apart they drift.

    fashion-twins lockstep [--steps N] [--optimizer sgd] [--lr 1e-3] [--momentum 0] [--batch-size 64]
                           [--dtype float32|float64] [--precision highest|tf32|both] [--out lockstep.json]

The two twins start from the torch twin's seeded weights and see the identical batch order; each
step's loss and, every --weight-every steps, every weight are compared as max |torch - flax|.
"""

from __future__ import annotations

from fashion_common.config import OPTIMIZERS, tutorial_config

from . import common


def add_parser(subparsers) -> None:
    base = tutorial_config()
    p = subparsers.add_parser(
        "lockstep",
        help="torch and a JAX twin trained step by step from one init; prints max |loss diff| and |weight diff|",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        parents=[
            common.data_parent(),
            common.device_parent("cpu"),
            common.precision_parent("highest"),
            common.threads_parent(),
        ],
    )
    p.add_argument(
        "--backend",
        choices=("flax", "nnx"),
        default="flax",
        help="the JAX twin trained against the torch twin: flax (Flax linen) or nnx (Flax NNX) (default: flax)",
    )
    p.add_argument(
        "--steps",
        type=common.positive_int,
        metavar="N",
        default=None,
        help="stop after N steps (default: one full epoch)",
    )
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=base.optimizer,
        help=f"the optimizer in the two twins (default: {base.optimizer}, the tutorial's)",
    )
    p.add_argument(
        "--lr", type=common.positive_float, metavar="X", default=base.lr, help=f"learning rate (default: {base.lr})"
    )
    p.add_argument(
        "--momentum",
        type=common.finite_float,
        metavar="X",
        default=base.momentum,
        help=f"SGD momentum (default: {base.momentum}); 0.9 shows float32's chaotic drift over an epoch",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="float32 (how the twins train) or float64 in the two twins, where rounding cannot flip a ReLU "
        "(default: float32)",
    )
    p.add_argument(
        "--batch-size",
        type=common.positive_int,
        metavar="N",
        default=base.batch_size,
        help=f"batch size (default: {base.batch_size})",
    )
    p.add_argument(
        "--seed",
        type=common.seed_int,
        metavar="N",
        default=base.seed,
        help=f"init and batch order (default: {base.seed})",
    )
    p.add_argument(
        "--weight-every",
        type=common.positive_int,
        metavar="N",
        default=25,
        help="compare every weight each N steps (default: 25)",
    )
    p.add_argument(
        "--out",
        metavar="JSON",
        default=None,
        help="also write every per-step figure here; with --precision both, one object per mode (default: none)",
    )
    common.add_quiet(p, "no progress bar, even on a terminal; the result lines still go to stdout")
    p.set_defaults(run=run)


def run(args) -> int:
    common.require_every_twin()  # a missing framework: one line naming [all], before any output
    from fashion_common.paths import check_no_aliases, check_output_file

    check_no_aliases({"--out": args.out}, {"--data-dir": args.data_dir})
    check_output_file(args.out, "--out")
    from fashion_common.data import load_fashion_mnist
    from fashion_common.loop import check_batch_fits
    from fashion_common.terminal import progress_bars_wanted
    from fashion_compare.benchmark import pick_device
    from fashion_compare.lockstep import lockstep

    device = pick_device(args.device)
    if device == "cpu" and args.precision in ("tf32", "both"):
        common.note(
            f"note: --precision {args.precision}: TF32 exists only on GPUs; on the CPU tf32 runs as highest (fp32)"
        )
    config = tutorial_config(
        epochs=1,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        batch_size=args.batch_size,
        seed=args.seed,
        device=device,
    )
    data = load_fashion_mnist(args.data_dir, download=args.download)
    check_batch_fits(config.batch_size, len(data.train_labels))  # train's words for the same mistake
    show_bar = not args.quiet and progress_bars_wanted()
    results = {}
    for mode in common.precisions(args.precision):
        result = lockstep(
            data, config, args.steps, args.weight_every, mode, progress=show_bar, dtype=args.dtype, twin=args.backend
        )
        results[mode] = result
        print(
            f"[lockstep] {result['steps']} steps, {config.optimizer} lr {config.lr} momentum {config.momentum} "
            f"batch {config.batch_size}, {args.dtype}, {mode}: "
            f"max |loss diff| {result['max_loss_diff']:.3g}, "
            f"final max |weight diff| {result['final_weight_diff']:.3g}, "
            f"final loss torch {result['loss_torch'][-1]:.6f} {args.backend} {result['loss_flax'][-1]:.6f}"
        )
    if args.out:
        from fashion_common.loop import write_json_atomic

        write_json_atomic(args.out, results[args.precision] if args.precision != "both" else results)
        print(f"[lockstep] wrote {args.out}")
    return 0
