"""Compare the twins: build both from one seed, put them side by side, train both, write a report folder.

    python scripts/compare.py                       # quick mode: a few minutes on a 2-core CPU
    python scripts/compare.py --full --out-dir report_full
    python scripts/compare.py --dry-run --out-dir /tmp/report   # seconds, for CI

Writes OUT_DIR/report.md, report.json, lockstep.png, curves.png and epoch_times.png; report.json
and report.md are rewritten after each stage. The work is done by fashion_compare.report.build_report.
"""

from __future__ import annotations

import argparse
import shlex
import sys

import _cli  # first: puts the repository root on sys.path

from fashion_common.config import DEVICES, TrainConfig
from fashion_compare.report import QUICK_LOCKSTEP_STEPS, CompareOptions

# --dry-run, as in scripts/train.py: short enough for CI to go end to end (explicit flags still win).
DRY_RUN = {"quick_epochs": 1, "limit_train": 2048, "limit_test": 512, "lockstep_steps": 20}


def build_parser() -> argparse.ArgumentParser:
    d = CompareOptions()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", metavar="DIR", default=d.out_dir, help=f"report folder, created if missing (default: {d.out_dir})")
    p.add_argument(
        "--full", action="store_true",
        help=f"the real recipe ({TrainConfig.epochs} epochs), the tutorial recipe ({d.tutorial_epochs} epochs) and a full lockstep epoch (default: off, quick mode)",
    )
    p.add_argument("--device", choices=DEVICES, default=d.device, help=f"auto: a GPU if torch and JAX both see one, else cpu (default: {d.device})")
    p.add_argument("--seed", type=int, default=d.seed, metavar="N", help=f"one seed for the init, the batch order and both trainings (default: {d.seed})")
    _cli.add_data_arguments(p)
    p.add_argument(
        "--quick-epochs", type=int, default=None, metavar="N",
        help=f"recipe epochs in quick mode; the cosine schedule then spans these (default: {d.quick_epochs}; not with --full)",
    )
    p.add_argument(
        "--lockstep-steps", type=int, default=None, metavar="N",
        help=f"lockstep SGD steps (default: {QUICK_LOCKSTEP_STEPS} on a CPU in quick mode; one full epoch with --full or on a GPU)",
    )
    p.add_argument("--dry-run", action="store_true", help=f"a quick end-to-end run for CI: {', '.join(f'{k}={v}' for k, v in DRY_RUN.items())} (default: off)")
    return p


def make_options(args, command: str) -> CompareOptions:
    """Flags -> CompareOptions; --dry-run first, explicit flags win; bad values raise ValueError."""
    if args.full and args.quick_epochs is not None:
        raise ValueError(f"--quick-epochs applies to quick mode only; --full trains the recipe's {TrainConfig.epochs} epochs")
    if args.full and args.dry_run:
        raise ValueError("--dry-run and --full contradict each other; give one")
    values = dict(DRY_RUN) if args.dry_run else {}
    values.update({k: v for k, v in (("quick_epochs", args.quick_epochs), ("lockstep_steps", args.lockstep_steps)) if v is not None})
    options = CompareOptions(
        out_dir=args.out_dir, full=args.full, device=args.device, seed=args.seed,
        data_dir=args.data_dir, download=args.download, command=command, **values,
    )
    options.check()
    return options


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    options = make_options(args, shlex.join(["python", sys.argv[0], *argv]))
    from fashion_compare.report import build_report

    report = build_report(options)
    files = ["report.md", "report.json", *report["plots"]]
    print(f"[compare] wrote {', '.join(f'{options.out_dir}/{f}' for f in files)} in {report['timings']['total_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    _cli.main_wrapper(main)
