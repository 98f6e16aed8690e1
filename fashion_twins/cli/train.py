"""fashion-twins train: train one twin on Fashion-MNIST; writes a checkpoint (+ optimizer sidecar) and METRICS.json.

    fashion-twins train --backend flax --out runs/flax.safetensors --metrics runs/flax.json
    fashion-twins train --backend torch --tutorial-recipe --out t.safetensors
    fashion-twins train --backend torch --dry-run --out /tmp/c.safetensors   # metrics: /tmp/c.metrics.json

Every TrainConfig field is a flag, made from the dataclass itself: its type, its default, its
choices (the config module's tuple named like the field, OPTIMIZERS for `optimizer`) and its help
(HELP below, else the field's comment in fashion_common/config.py). A field added there is a flag
here with no edit. The work is done by <twin>.train.train_and_evaluate.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import typing

from fashion_common import config as config_module
from fashion_common.config import TrainConfig, tutorial_config
from fashion_common.errors import ConfigError

from . import common

# Help per TrainConfig field; "(default: ...)" is appended from TrainConfig itself. Fields not
# listed here take the comment beside them in fashion_common/config.py.
HELP = {
    "epochs": "full passes over the training images",
    "batch_size": "training batch size; the last partial batch is dropped",
    "lr": "peak learning rate",
    "momentum": "SGD momentum; 0 is the tutorial's plain SGD",
    "schedule": "constant, or cosine decay from --lr to 0 over all steps",
    "weight_decay": "decoupled for adamw; added to the gradient for sgd and adam",
    "label_smoothing": "cross-entropy label smoothing; 0 is plain cross-entropy",
    "seed": "drives init and batch order; the same seed gives the same run",
    "device": "auto: a GPU if the framework sees one, else cpu",
    "eval_batch_size": "test-set evaluation chunk; does not change results",
    "limit_train": "use only the first N training images",
    "limit_test": "use only the first N test images",
}

# --dry-run, as in pytorch/examples: a run short enough for CI to go end to end (explicit flags still win).
DRY_RUN = {"epochs": 1, "limit_train": 2048, "limit_test": 512}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train one twin; writes a checkpoint, its optimizer sidecar and METRICS.json",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1], parents=[common.backend_parent(), common.data_parent()],
    )
    defaults, tutorial = TrainConfig(), tutorial_config()
    comments = _field_comments()
    for field in dataclasses.fields(TrainConfig):
        default = getattr(defaults, field.name)
        recipe = getattr(tutorial, field.name, default)
        stated = f"default: {'all' if default is None and field.name.startswith('limit_') else default}"
        if recipe != default:
            stated += f"; {recipe} with --tutorial-recipe"
        text = HELP.get(field.name) or comments.get(field.name) or field.name.replace("_", " ")
        p.add_argument("--" + field.name.replace("_", "-"), default=None, help=f"{text} ({stated})".replace("%", "%%"), **_flag_kind(field))
    p.add_argument("--tutorial-recipe", action="store_true", help="start from the tutorial's recipe, the values marked 'with --tutorial-recipe' above, instead of the defaults (default: off)")
    p.add_argument("--dry-run", action="store_true", help=f"a quick end-to-end run for CI: {', '.join(f'{k}={v}' for k, v in DRY_RUN.items())} (default: off)")
    p.add_argument("--resume", metavar="CKPT", default=None, help="continue a run from a checkpoint this command wrote; same backend and config (default: start fresh)")
    p.add_argument("--quiet", action="store_true", help="no progress bars; the per-epoch lines are still printed (default: off)")
    p.add_argument("--out", metavar="CKPT.safetensors", required=True, help="checkpoint to write after every epoch; optimizer state goes beside it in CKPT.state.safetensors (required)")
    p.add_argument(
        "--metrics", metavar="METRICS.json", default=None,
        help="per-epoch metrics, device, versions and config, rewritten after every epoch (default: beside --out, CKPT.metrics.json)",
    )
    p.set_defaults(run=run)


def _field_comments() -> dict:
    """field name -> the `# comment` beside it in TrainConfig's source (the dataclass's commented defaults)."""
    try:
        source = inspect.getsource(TrainConfig)
    except (OSError, TypeError):  # no source (a zipped install): fall back to the field names
        return {}
    found = {}
    for line in source.splitlines():
        m = re.match(r"\s+(\w+)\s*:[^=]+=.*?#\s*(.+)$", line)
        if m:
            found[m.group(1)] = m.group(2).strip()
    return found


def _flag_kind(field) -> dict:
    """argparse keywords for one TrainConfig field: type with a parse-time range check, choices, metavar."""
    hint = typing.get_type_hints(TrainConfig)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    kind = args[0] if typing.get_origin(hint) is typing.Union and args else hint
    choices = field.metadata.get("choices") or getattr(config_module, field.name.upper() + "S", None)
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if isinstance(choices, tuple) and all(isinstance(c, str) for c in choices) and kind is str:
        return {"choices": choices}
    if kind is int:
        # Ranges are TrainConfig._check's (run by make_config, still before any work); the seed's is also here.
        return {"type": common.seed_int if field.name == "seed" else common.integer, "metavar": "N"}
    if kind is float:
        return {"type": common.finite_float, "metavar": "X"}
    return {"type": kind if callable(kind) else str, "metavar": "S"}


def make_config(args) -> TrainConfig:
    """Base config (defaults or the tutorial recipe), then --dry-run, then explicit flags; a bad value names its flag."""
    base = tutorial_config() if args.tutorial_recipe else TrainConfig()
    if args.dry_run:
        base = base.replace(**DRY_RUN)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}
    for key, value in given.items():  # one at a time first, so the error names the flag at fault
        try:
            base.replace(**{key: value})
        except ConfigError as e:
            raise common.UsageError(f"argument --{key.replace('_', '-')}: {e}") from None
    return base.replace(**given)


def run(args) -> int:
    from fashion_common.checkpoint import metrics_path_for, read_state, read_train_state, train_state_path
    from fashion_common.loop import check_resume
    from fashion_common.paths import check_no_aliases, check_output_file

    # ---- everything cheap that can fail, before the framework import, the data and the training
    config = make_config(args)
    out, sidecar = args.out, str(train_state_path(args.out))
    metrics = args.metrics if args.metrics is not None else str(metrics_path_for(args.out))
    outputs = {"--out": out, "--out's sidecar": sidecar, "--metrics": metrics}
    inputs = {}
    if args.resume is not None:
        inputs = {"--resume": args.resume, "--resume's sidecar": str(train_state_path(args.resume))}
    check_no_aliases(outputs, inputs, allowed=[("--out", "--resume"), ("--out's sidecar", "--resume's sidecar")])
    for flag, path in outputs.items():
        check_output_file(path, flag)

    if args.resume is not None:
        # Weights, then the optimizer sidecar, must exist, parse and belong to this backend and config.
        read_state(args.resume)
        _, counters = read_train_state(args.resume)
        check_resume(args.resume, counters, args.backend, config)
        if int(counters.get("epoch", 0)) >= config.epochs:
            return _finished(args, config, counters, out, sidecar, metrics)

    twin = common.backend_module(args.backend)
    twin.resolve_device(config.device)
    from fashion_common.data import load_fashion_mnist

    data = load_fashion_mnist(args.data_dir, download=args.download)
    twin.train.train_and_evaluate(config, data, out=out, metrics_path=metrics, resume=args.resume, quiet=args.quiet)
    print(f"[{args.backend}] wrote {out}, {sidecar} and {metrics}")
    return 0


def _finished(args, config: TrainConfig, counters: dict, out: str, sidecar: str, metrics: str) -> int:
    """--resume of a run that already has every epoch: nothing to train; copy it if --out is another file.

    The loop would run no epoch and so write nothing; saying `wrote` then would be a lie.
    """
    from pathlib import Path

    from fashion_common.checkpoint import atomic_write_bytes, train_state_path
    from fashion_common.loop import write_json_atomic
    from fashion_common.paths import same_file

    done = f"{args.resume} already holds all {config.epochs} epochs"
    if same_file(args.resume, out):
        print(f"[{args.backend}] {done}; nothing to train, nothing written")
        return 0
    atomic_write_bytes(out, Path(args.resume).read_bytes())
    atomic_write_bytes(sidecar, train_state_path(args.resume).read_bytes())
    write_json_atomic(metrics, {"backend": args.backend, "copied_from": str(args.resume), "config": config.to_dict(), "epochs": counters.get("history", [])})
    print(f"[{args.backend}] {done}; nothing to train. Copied: wrote {out}, {sidecar} and {metrics}")
    return 0
