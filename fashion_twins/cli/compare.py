"""fashion-twins compare: the three twins from one seed, side by side, each trained; writes a report folder.

    fashion-twins compare                       # quick mode: a few minutes on a 2-core CPU
    fashion-twins compare --full --out-dir report_full
    fashion-twins compare --dry-run --out-dir /tmp/report   # seconds, for CI
    fashion-twins compare --distributed 2                    # also 1 device vs 2-way data parallel, torch and flax

Writes OUT_DIR/report.md, report.json, PNG plots and the final checkpoints of every twin
(<run>-<twin>.safetensors, for predict or evaluate); report.json and report.md are rewritten
after each stage. The work is done by fashion_compare.report.build_report.
"""

from __future__ import annotations

import shlex
import sys

from fashion_common.config import TrainConfig

from . import common

# --dry-run, as in train: short enough for CI to go end to end (explicit flags still win).
DRY_RUN = {"quick_epochs": 1, "limit_train": 2048, "limit_test": 512, "lockstep_steps": 20}


def add_parser(subparsers) -> None:
    from fashion_compare.report import QUICK_LOCKSTEP_STEPS, CompareOptions  # framework-free at import

    d = CompareOptions()
    p = subparsers.add_parser(
        "compare",
        help="the three twins side by side: parity, lockstep, training; writes a report folder",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        parents=[
            common.data_parent(),
            common.device_parent(d.device),
            common.precision_parent(d.precision, choices=common.ONE_PRECISION),
            common.threads_parent(),
        ],
    )
    p.add_argument(
        "--out-dir", metavar="DIR", default=d.out_dir, help=f"report folder, created if missing (default: {d.out_dir})"
    )
    p.add_argument(
        "--full",
        action="store_true",
        help=(
            f"the real recipe ({TrainConfig.epochs} epochs), the tutorial recipe ({d.tutorial_epochs} epochs) and "
            "a full lockstep epoch (default: off, quick mode)"
        ),
    )
    p.add_argument(
        "--seed",
        type=common.seed_int,
        default=d.seed,
        metavar="N",
        help=f"one seed for the init, the batch order and every training (default: {d.seed})",
    )
    p.add_argument(
        "--quick-epochs",
        type=common.positive_int,
        default=None,
        metavar="N",
        help=(
            f"recipe epochs in quick mode; the cosine schedule then spans these (default: {d.quick_epochs}; not "
            "with --full)"
        ),
    )
    p.add_argument(
        "--lockstep-steps",
        type=common.positive_int,
        default=None,
        metavar="N",
        help=(
            f"lockstep SGD steps (default: {QUICK_LOCKSTEP_STEPS} on a CPU in quick mode; one full epoch with "
            "--full or on a GPU)"
        ),
    )
    p.add_argument(
        "--distributed",
        type=common.int_in(0),
        default=d.distributed,
        metavar="N",
        help="also train each twin on 1 device and N-way data parallel (torch DDP under torchrun, flax over a mesh; "
        "simulated devices on a CPU) and compare weights and ms/step; N must divide the batch of 64 (default: 0, "
        "skipped)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help=f"a quick end-to-end run for CI: {', '.join(f'{k}={v}' for k, v in DRY_RUN.items())} (default: off)",
    )
    p.add_argument(
        "--tensorboard",
        metavar="DIR",
        default=None,
        help="also write each training's per-epoch scalars into DIR/<recipe>/<twin>/, as train --tensorboard does; "
        "needs pip install 'fashion-twins[tensorboard]' (default: none)",
    )
    common.add_quiet(
        p, "nothing on stderr but errors: no progress bars, no stage or epoch lines; the closing line stays"
    )
    p.set_defaults(run=run)


def make_options(args, command: str):
    """Flags -> CompareOptions; --dry-run first, explicit flags win; contradictions are usage errors."""
    from fashion_compare.report import CompareOptions

    if args.full and args.quick_epochs is not None:
        raise common.UsageError(
            f"argument --quick-epochs: applies to quick mode only; --full trains the recipe's {TrainConfig.epochs} "
            "epochs"
        )
    if args.full and args.dry_run:
        raise common.UsageError("argument --dry-run: contradicts --full; give one")
    values = dict(DRY_RUN) if args.dry_run else {}
    values.update(
        {
            k: v
            for k, v in (("quick_epochs", args.quick_epochs), ("lockstep_steps", args.lockstep_steps))
            if v is not None
        }
    )
    options = CompareOptions(
        out_dir=args.out_dir,
        full=args.full,
        device=args.device,
        seed=args.seed,
        precision=args.precision,
        data_dir=args.data_dir,
        download=args.download,
        command=command,
        distributed=args.distributed,
        tensorboard=args.tensorboard,
        quiet=True if args.quiet else None,  # None: bars only when stderr is a terminal
        **values,
    )
    options.check()
    return options


def run(args) -> int:
    common.require_every_twin()  # a missing framework: one line naming [all], before any output
    from fashion_common.paths import check_no_aliases, check_output_dir

    options = make_options(args, shlex.join(["fashion-twins", *getattr(args, "argv", sys.argv[1:])]))
    check_no_aliases({"--out-dir": args.out_dir}, {"--data-dir": args.data_dir})
    check_output_dir(args.out_dir, "--out-dir")
    if args.tensorboard is not None:
        from .train import check_tensorboard

        check_tensorboard(args.tensorboard)
    from fashion_compare.report import build_report

    report = build_report(options, log=(lambda line: None) if args.quiet else common.note)
    checkpoints = [f for kept in report.get("checkpoints", {}).values() for f in kept.values()]
    files = ["report.md", "report.json", *report.get("plots", []), *checkpoints]
    total = report.get("timings", {}).get("total_seconds")
    took = f" in {total:.0f}s" if isinstance(total, (int, float)) else ""
    print(f"[compare] wrote {', '.join(f'{options.out_dir}/{f}' for f in files)}{took}")
    return 0
