"""Train one twin on Fashion-MNIST; writes a checkpoint (+ optimizer sidecar) and METRICS.json.

    python scripts/train.py --backend flax --out runs/flax.safetensors --metrics runs/flax.json
    python scripts/train.py --backend torch --tutorial-recipe --out t.safetensors --metrics t.json
    python scripts/train.py --backend torch --dry-run --out /tmp/c.safetensors   # metrics: /tmp/c.metrics.json

Every TrainConfig field is a flag; the defaults shown in --help are read from TrainConfig, so
they live in fashion_common/config.py only. The work is done by <twin>.train.train_and_evaluate.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

import _cli  # first: puts the repository root on sys.path

from fashion_common.checkpoint import metrics_path_for, read_state, read_train_state, train_state_path
from fashion_common.config import DEVICES, OPTIMIZERS, SCHEDULES, TrainConfig, tutorial_config
from fashion_common.data import load_fashion_mnist

# Help per TrainConfig field; "(default: ...)" is appended from TrainConfig itself.
HELP = {
    "epochs": "full passes over the training images",
    "batch_size": "training batch size; the last partial batch is dropped",
    "optimizer": "sgd, adam or adamw",
    "lr": "peak learning rate",
    "momentum": "SGD momentum; 0 is the tutorial's plain SGD",
    "schedule": "constant, or cosine decay from --lr to 0 over all steps",
    "weight_decay": "decoupled for adamw; added to the gradient for sgd and adam",
    "label_smoothing": "cross-entropy label smoothing; 0 is plain cross-entropy",
    "seed": "drives init and batch order; the same seed gives the same run",
    "device": "auto: a GPU if the framework sees one, else cpu",
    "eval_batch_size": "test-set evaluation chunk; does not change results",
    "augment_shift": "random shifts of up to N pixels, the same offsets in both twins; 0 is off",
    "val_size": "hold out N training images as a validation split, scored every epoch; 0 is none",
    "limit_train": "use only the first N training images",
    "limit_test": "use only the first N test images",
}
CHOICES = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "device": DEVICES}

# --dry-run, as in pytorch/examples: a run short enough for CI to go end to end (explicit flags still win).
DRY_RUN = {"epochs": 1, "limit_train": 2048, "limit_test": 512}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _cli.add_backend_argument(parser)
    defaults, tutorial = TrainConfig(), tutorial_config()
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        kind = _scalar_type(hints[field.name])
        default, recipe = getattr(defaults, field.name), getattr(tutorial, field.name)
        stated = f"default: {'all' if default is None else default}"
        if recipe != default:
            stated += f"; {recipe} with --tutorial-recipe"
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            type=kind,
            choices=CHOICES.get(field.name),
            default=None,  # None = not given, so only explicit flags override the chosen base config
            metavar=None if field.name in CHOICES else {int: "N", float: "X"}.get(kind, "S"),
            help=f"{HELP[field.name]} ({stated})",
        )
    parser.add_argument("--tutorial-recipe", action="store_true", help="start from the tutorial's recipe, the values marked 'with --tutorial-recipe' above, instead of the defaults (default: off)")
    parser.add_argument("--dry-run", action="store_true", help=f"a quick end-to-end run for CI: {', '.join(f'{k}={v}' for k, v in DRY_RUN.items())} (default: off)")
    _cli.add_data_arguments(parser)
    parser.add_argument("--resume", metavar="CKPT", default=None, help="continue a run from a checkpoint this script wrote; same backend and seed (default: start fresh)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars; the per-epoch lines are still printed (default: off)")
    parser.add_argument("--out", metavar="CKPT.safetensors", required=True, help="checkpoint to write after every epoch; optimizer state goes beside it in CKPT.state.safetensors")
    parser.add_argument(
        "--metrics", metavar="METRICS.json", default=None,
        help="per-epoch metrics, device, versions and config, rewritten after every epoch (default: beside --out, CKPT.metrics.json)",
    )
    return parser


def _scalar_type(hint):
    """int, float, str, or the int inside Optional[int]."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def make_config(args) -> TrainConfig:
    """Base config (defaults or the tutorial recipe), then --dry-run, then explicit flags; bad values raise ConfigError."""
    config = tutorial_config() if args.tutorial_recipe else TrainConfig()
    if args.dry_run:
        config = config.replace(**DRY_RUN)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}
    return config.replace(**given)


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    # Everything cheap that can fail is checked before the framework import, the data and the training.
    config = make_config(args)
    _cli.check_output_path(args.out, "--out")
    if args.metrics is None:
        args.metrics = str(metrics_path_for(args.out))
    _cli.check_output_path(args.metrics, "--metrics")
    if args.resume is not None:
        # Weights, then the optimizer sidecar, must exist and parse; the loop checks backend and seed.
        read_state(args.resume)
        read_train_state(args.resume)
    twin = _cli.backend_module(args.backend)
    twin.resolve_device(config.device)

    data = load_fashion_mnist(args.data_dir, download=args.download)
    twin.train.train_and_evaluate(config, data, out=args.out, metrics_path=args.metrics, resume=args.resume, quiet=args.quiet)
    print(f"[{args.backend}] wrote {args.out}, {train_state_path(args.out)} and {args.metrics}")
    return 0


if __name__ == "__main__":
    _cli.main_wrapper(main)
