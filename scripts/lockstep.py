"""Train both twins in lockstep and print how far apart they drift.

    python scripts/lockstep.py [--steps N] [--optimizer sgd] [--lr 1e-3] [--batch-size 64] [--precision highest|tf32] [--out lockstep.json]

Both twins start from the torch twin's seeded weights and see the identical batch order; each step's
loss and, every --weight-every steps, every weight are compared as max |torch - flax|.
"""

from __future__ import annotations

import argparse

import _cli


def build_parser() -> argparse.ArgumentParser:
    from fashion_common.config import tutorial_config

    base = tutorial_config()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="stop after N steps (default: one full epoch)")
    p.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default=base.optimizer, help=f"(default: {base.optimizer}, the tutorial's)")
    p.add_argument("--lr", type=float, default=base.lr, help=f"(default: {base.lr})")
    p.add_argument("--batch-size", type=int, default=base.batch_size, help=f"(default: {base.batch_size})")
    p.add_argument("--seed", type=int, default=base.seed, help=f"init and batch order (default: {base.seed})")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="(default: cpu)")
    p.add_argument("--precision", choices=("highest", "tf32"), default="highest", help="matmul precision in both twins (default: highest)")
    p.add_argument("--weight-every", type=int, default=25, help="compare every weight each N steps (default: 25)")
    p.add_argument("--out", metavar="JSON", default=None, help="also write every per-step figure here (default: none)")
    _cli.add_data_arguments(p)
    return p


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    from fashion_common.config import tutorial_config

    config = tutorial_config(epochs=1, optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size, seed=args.seed, device=args.device)
    if (args.steps is not None and args.steps < 1) or args.weight_every < 1:
        raise ValueError("--steps and --weight-every must be >= 1")
    if args.out:
        _cli.check_output_path(args.out, "--out")
    from fashion_common.data import load_fashion_mnist
    from fashion_compare.lockstep import lockstep

    data = load_fashion_mnist(args.data_dir, download=args.download)
    result = lockstep(data, config, args.steps, args.weight_every, args.precision, progress=True)
    print(
        f"[lockstep] {result['steps']} steps, {config.optimizer} lr {config.lr} batch {config.batch_size}, {args.precision}: "
        f"max |loss diff| {result['max_loss_diff']:.3g}, final max |weight diff| {result['final_weight_diff']:.3g}, "
        f"final loss torch {result['loss_torch'][-1]:.6f} flax {result['loss_flax'][-1]:.6f}"
    )
    if args.out:
        from fashion_common.loop import write_json_atomic

        write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    _cli.main_wrapper(main)
