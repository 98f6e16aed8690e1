"""fashion-twins train: train one twin on Fashion-MNIST; writes a checkpoint (+ optimizer sidecar) and METRICS.json.

    fashion-twins train --backend flax --out runs/flax.safetensors --metrics runs/flax.json
    fashion-twins train --backend torch --tutorial-recipe --out t.safetensors
    fashion-twins train --backend torch --dry-run --out /tmp/c.safetensors   # metrics: /tmp/c.metrics.json
    torchrun --standalone --nproc-per-node 2 -m fashion_twins train --backend torch --out m.safetensors   # DDP
    fashion-twins train --backend flax --devices 2 --out m.safetensors          # a 2-device mesh (simulated on a CPU)
    fashion-twins train --backend nnx --devices 2 --out m.safetensors           # the same for the NNX twin

Every TrainConfig field is a flag, made from the dataclass itself: its type, its default, and its
help and choices from the field's metadata in fashion_common/config.py. A field added there is a
flag here with no edit. `--engine` is the torch twin's own option (fashion_torch.train.ENGINES).
The work is done by <twin>.train.train_and_evaluate, or data-parallel by
<twin>.distributed.train_and_evaluate: torch under torchrun (RANK and WORLD_SIZE set), flax and nnx
with --devices N or --coordinator HOST:PORT --num-processes K --process-id I.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import traceback
import types
import typing

from fashion_common import interrupt
from fashion_common.config import RECIPES, TrainConfig, tutorial_config
from fashion_common.distributed import (
    DEFAULT_TIMEOUT_S,
    MAX_TIMEOUT_S,
    MIN_TIMEOUT_S,
    check_world,
    under_torchrun,
    world_from_env,
)
from fashion_common.errors import ConfigError

from . import common

# fashion_torch.train.ENGINES, spelled out so that `--help` needs no torch import; a test holds them equal.
TORCH_ENGINES = ("auto", "eager", "compile", "cuda_graph", "fused")
ENGINE_HELP = (
    "torch only: how a step runs. eager: autograd + torch.optim op by op; compile: model and loss under "
    "torch.compile; cuda_graph: CUDA only, torch.compile mode reduce-overhead, replayed CUDA graphs; fused: "
    "opt-in hand-written backward, tested against autograd; auto: eager on a CPU, compile on CUDA (default: auto)"
)

# --dry-run, as in pytorch/examples: a run short enough for CI to go end to end (explicit flags still win).
DRY_RUN = {"epochs": 1, "limit_train": 2048, "limit_test": 512}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train one twin; writes a checkpoint, its optimizer sidecar and METRICS.json",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        parents=[common.backend_parent(), common.data_parent(), common.threads_parent()],
    )
    defaults, tutorial = TrainConfig(), tutorial_config()
    for field in dataclasses.fields(TrainConfig):
        default = getattr(defaults, field.name)
        recipe = getattr(tutorial, field.name, default)
        stated = f"default: {'all' if default is None and field.name.startswith('limit_') else default}"
        if recipe != default:
            stated += f"; {recipe} with --tutorial-recipe"
        text = field.metadata.get("help") or field.name.replace("_", " ")
        p.add_argument(
            "--" + field.name.replace("_", "-"),
            default=None,
            help=f"{text} ({stated})".replace("%", "%%"),
            **_flag_kind(field),
        )
    p.add_argument("--engine", choices=TORCH_ENGINES, default=None, help=ENGINE_HELP)
    p.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        default=None,
        help="the config the flags start from: default (the accuracy recipe, 91 %%), fast (the shortest time to "
        "89 %%: batch 256, 10 epochs) or tutorial (= --tutorial-recipe) (default: default)",
    )
    p.add_argument(
        "--tutorial-recipe",
        action="store_true",
        help=(
            "start from the tutorial's recipe, the values marked 'with --tutorial-recipe' above, instead of the "
            "defaults (default: off)"
        ),
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help=f"a quick end-to-end run for CI: {', '.join(f'{k}={v}' for k, v in DRY_RUN.items())} (default: off)",
    )
    p.add_argument(
        "--resume",
        metavar="CKPT",
        default=None,
        help="continue a run from a checkpoint this command wrote; same backend and config (default: start fresh)",
    )
    common.add_quiet(p, "no progress bar, even on a terminal; the per-epoch lines still go to stdout")
    p.add_argument(
        "--out",
        metavar="CKPT.safetensors",
        required=True,
        help=(
            "checkpoint to write after every epoch; optimizer state goes beside it in CKPT.state.safetensors (required)"
        ),
    )
    p.add_argument(
        "--metrics",
        metavar="METRICS.json",
        default=None,
        help=(
            "per-epoch metrics, device, versions and config, rewritten after every epoch (default: beside --out, "
            "CKPT.metrics.json)"
        ),
    )
    p.add_argument(
        "--tensorboard",
        metavar="DIR",
        default=None,
        help="also write per-epoch scalars for TensorBoard into DIR/<backend>/ (losses, accuracies, learning rate, "
        "epoch seconds); view with tensorboard --logdir DIR; needs pip install 'fashion-twins[tensorboard]' "
        "(default: none)",
    )
    p.add_argument(
        "--init",
        metavar="CKPT",
        default=None,
        help=(
            "start from this checkpoint's weights instead of the seeded init, e.g. the other twin's (default: the "
            "seeded init)"
        ),
    )
    d = p.add_argument_group(
        "data parallel",
        "torch: launch this command with torchrun (one process per rank; DDP, gloo on CPU, NCCL on CUDA). "
        "flax, nnx: --devices N in one process, or one process per host with --coordinator.",
    )
    d.add_argument(
        "--devices",
        type=common.positive_int,
        default=None,
        metavar="N",
        help=(
            "flax, nnx: shard each batch over the first N devices; on a CPU, N simulated host devices (default: "
            "one device, no mesh)"
        ),
    )
    d.add_argument(
        "--coordinator",
        type=host_port,
        default=None,
        metavar="HOST:PORT",
        help="flax, nnx multi-process: process 0's address for jax.distributed.initialize (default: one process)",
    )
    d.add_argument(
        "--num-processes",
        type=common.positive_int,
        default=None,
        metavar="K",
        help="flax, nnx multi-process: processes in the run, with --coordinator (default: 1)",
    )
    d.add_argument(
        "--process-id",
        type=common.int_in(0),
        default=None,
        metavar="I",
        help="flax, nnx multi-process: this process's index in 0..K-1, with --coordinator (default: 0)",
    )
    d.add_argument(
        "--timeout",
        type=common.timeout_seconds,
        default=None,
        metavar="S",
        help=(
            f"data-parallel runs: seconds to wait on a silent peer before failing with an error, {MIN_TIMEOUT_S} to "
            f"{MAX_TIMEOUT_S} (what jax.distributed and torch's c10d take) (default: {DEFAULT_TIMEOUT_S})"
        ),
    )
    p.set_defaults(run=run)


def check_tensorboard(folder) -> None:
    """--tensorboard: the optional extra must be installed and DIR a folder that can be made or written."""
    from fashion_common import tensorboard
    from fashion_common.paths import check_output_dir

    if not tensorboard.available():
        raise common.UsageError(
            f"argument --tensorboard: needs the tensorboard package, an optional extra: {tensorboard.INSTALL_HINT}"
        )
    check_output_dir(folder, "--tensorboard")


def host_port(text: str) -> str:
    """An argparse type: HOST:PORT with a port in 1..65535."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"must be HOST:PORT, e.g. 10.0.0.1:1234, got {text!r}")
    return text


def _flag_kind(field) -> dict:
    """argparse keywords for one TrainConfig field: type with a parse-time range check, choices, metavar."""
    hint = typing.get_type_hints(TrainConfig)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)  # Optional[X] or X | None
    kind = args[0] if optional and args else hint
    choices = field.metadata.get("choices")
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
    """Base config (defaults or the tutorial recipe), then --dry-run, then explicit flags.

    A bad value names its flag.
    """
    if args.tutorial_recipe and args.recipe not in (None, "tutorial"):
        raise common.UsageError(f"argument --tutorial-recipe: contradicts --recipe {args.recipe}")
    base = RECIPES["tutorial" if args.tutorial_recipe else args.recipe or "default"]()
    if args.dry_run:
        base = base.replace(**DRY_RUN)
    given = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None
    }
    for key, value in given.items():  # one at a time first, so the error names the flag at fault
        try:
            base.replace(**{key: value})
        except ConfigError as e:
            raise common.UsageError(f"argument --{key.replace('_', '-')}: {e}") from None
    return base.replace(**given)


def data_parallel(args, config: TrainConfig):
    """None (one device), "torchrun" (torch DDP) or "mesh" (flax or nnx sharding).

    Misuse and an indivisible batch fail here, before any work.
    """
    torch_hint = (
        "the torch twin runs data-parallel under torchrun: torchrun --nproc-per-node N -m fashion_twins train "
        "--backend torch ..."
    )
    flax_flags = [
        flag
        for flag in ("--devices", "--coordinator", "--num-processes", "--process-id")
        if getattr(args, flag[2:].replace("-", "_")) is not None
    ]
    mode = None
    if args.backend == "torch":
        if flax_flags:
            raise common.UsageError(f"argument {flax_flags[0]}: {torch_hint} (multi-node: --nnodes, --rdzv-endpoint)")
        if under_torchrun():
            if args.engine == "fused":
                raise common.UsageError(
                    "argument --engine: fused (the hand-written backward) is single-device only; DDP all-reduces "
                    "autograd's gradients: use eager or compile"
                )
            check_world(world_from_env().size, config.batch_size, "ranks")
            mode = "torchrun"
    else:
        if under_torchrun() and world_from_env().size > 1:
            raise common.UsageError(
                f"the {args.backend} twin is not launched by torchrun (WORLD_SIZE={world_from_env().size}): "
                "use --devices N in one process, or --coordinator HOST:PORT --num-processes K --process-id I in each"
            )
        if args.coordinator is None and (args.num_processes is not None or args.process_id is not None):
            flag = "--num-processes" if args.num_processes is not None else "--process-id"
            raise common.UsageError(f"argument {flag}: needs --coordinator HOST:PORT, process 0's address")
        if args.coordinator is not None:
            if args.num_processes is None or args.process_id is None:
                raise common.UsageError("argument --coordinator: needs --num-processes K and --process-id I")
            if args.process_id >= args.num_processes:
                raise common.UsageError(
                    f"argument --process-id: must be in 0..{args.num_processes - 1} for --num-processes "
                    f"{args.num_processes}, got {args.process_id}"
                )
            if args.devices is not None:
                raise common.UsageError(
                    "argument --devices: a multi-process run shards over every device of its processes; drop --devices"
                )
            mode = "mesh"
        elif args.devices is not None:
            check_world(args.devices, config.batch_size, "devices")
            mode = "mesh"
    if args.engine is not None and args.backend != "torch":
        raise common.UsageError(
            f"argument --engine: a torch option; the {args.backend} twin always runs jit + lax.scan (drop --engine)"
        )
    if mode is None and args.timeout is not None:
        raise common.UsageError(
            "argument --timeout: applies to data-parallel runs only (torchrun, --devices or --coordinator)"
        )
    return mode


def _is_writer(args, mode) -> bool:
    """Rank / process 0 writes the checkpoint, metrics and the `wrote` line; the others only train."""
    if mode == "torchrun":
        return world_from_env().rank == 0
    return (args.process_id or 0) == 0


def run(args) -> int:
    from fashion_common.checkpoint import metrics_path_for, read_state, run_lock, train_state_path
    from fashion_common.paths import check_no_aliases, check_output_file

    # ---- everything cheap that can fail, before the framework import, the data and the training
    config = make_config(args)
    mode = data_parallel(args, config)
    if args.init is not None and args.resume is not None:
        raise common.UsageError("argument --init: contradicts --resume, which continues from its own weights; give one")
    out, sidecar = args.out, str(train_state_path(args.out))
    metrics = args.metrics if args.metrics is not None else str(metrics_path_for(args.out))
    outputs = {"--out": out, "--out's sidecar": sidecar, "--metrics": metrics}
    inputs = {}
    if args.resume is not None:
        inputs = {"--resume": args.resume, "--resume's sidecar": str(train_state_path(args.resume))}
    if args.init is not None:
        inputs["--init"] = args.init
    check_no_aliases(outputs, inputs, allowed=[("--out", "--resume"), ("--out's sidecar", "--resume's sidecar")])
    for flag, path in outputs.items():
        check_output_file(path, flag)
    if args.tensorboard is not None:
        check_tensorboard(args.tensorboard)
    if args.init is not None:
        read_state(args.init)  # exists, parses, every key and shape
    # One run writes --out at a time: held until this command returns; the OS drops it if the process dies.
    lock = run_lock(out) if _is_writer(args, mode) else None
    try:
        return _run_locked(args, config, mode, out, sidecar, metrics)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(args, config: TrainConfig, mode, out: str, sidecar: str, metrics: str) -> int:
    """run() once --out is this process's: check --resume, train, say what was written."""
    from fashion_common.checkpoint import read_checkpoint, train_state_path, validate_training_state
    from fashion_common.loop import check_resume

    if args.resume is not None:
        # The pair (the sidecar, and the weights file if present) must parse, verify and be one run of this config.
        _, _, counters = read_checkpoint(args.resume)
        check_resume(args.resume, counters, args.backend, config)
        # The counters against the run (epoch within --epochs, steps whole epochs); the twin checks the slots.
        validate_training_state(train_state_path(args.resume), counters, config.epochs)
        if int(counters.get("epoch", 0)) >= config.epochs:
            return _finished(args, config, counters, out, sidecar, metrics) if _is_writer(args, mode) else 0

    twin = common.backend_module(args.backend, start_backend=mode is None)
    writer = None
    if args.tensorboard is not None and _is_writer(args, mode):  # rank / process 0 only, as the checkpoint
        from fashion_common.tensorboard import EpochWriter

        writer = EpochWriter(args.tensorboard, args.backend)
    kwargs = dict(out=out, metrics_path=metrics, resume=args.resume, quiet=args.quiet, init_from=args.init)
    kwargs["on_epoch"] = writer
    if args.engine is not None:  # torch only (refused above for the other twins)
        kwargs["engine"] = args.engine
    interrupt.install()  # Ctrl-C sets a flag; the epoch loops stop at the next step boundary (exit 130)
    try:
        if mode is None:
            _train_one_device(args, config, twin, kwargs)
        else:
            _train_data_parallel(args, config, mode, dict(kwargs, timeout_s=args.timeout or DEFAULT_TIMEOUT_S))
    finally:
        interrupt.uninstall()
        if writer is not None:
            writer.close()
    if _is_writer(args, mode):
        print(f"[{args.backend}] wrote {out}, {sidecar} and {metrics}")
    return 0


def _train_one_device(args, config: TrainConfig, twin, kwargs: dict) -> None:
    """The twin's own train_and_evaluate on one device (from --init's weights when given)."""
    from fashion_common.data import load_fashion_mnist

    twin.resolve_device(config.device)  # --device gpu without one fails here, before the data loads
    data = load_fashion_mnist(args.data_dir, download=args.download)
    twin.train.train_and_evaluate(config, data, **kwargs)


def _train_data_parallel(args, config: TrainConfig, mode: str, kwargs: dict) -> None:
    """torch DDP over the torchrun world, or flax / nnx over a mesh; once joined, a failure leaves at once.

    The order matters for flax and nnx: the simulated CPU device count before JAX's backend starts, then
    jax.distributed.initialize, then the mesh and its batch check, and only then the data.
    """
    from fashion_common.data import load_fashion_mnist

    if mode == "torchrun":
        import fashion_torch.distributed as parallel
    else:
        import jax

        if args.backend == "nnx":
            import fashion_nnx.distributed as parallel
        else:
            import fashion_flax.distributed as parallel

        if args.devices is not None and config.device != "gpu":
            try:  # N simulated host devices (a no-op where a GPU is used); only before the backend starts
                jax.config.update("jax_num_cpu_devices", args.devices)
            except RuntimeError:  # already started (a caller in this process): make_mesh names the devices it sees
                pass
    try:
        if mode == "torchrun":
            data = load_fashion_mnist(args.data_dir, download=args.download)
            parallel.train_and_evaluate(config, data, **kwargs)  # joins the process group, then trains
        else:
            with common.jax_platforms_named():  # the backends start here, after jax.distributed.initialize
                parallel.initialize(
                    args.coordinator, args.num_processes or 1, args.process_id or 0, kwargs["timeout_s"]
                )
                mesh = parallel.make_mesh(args.devices, parallel.config_platform(config))
            check_world(mesh.size, config.batch_size, "devices")
            data = load_fashion_mnist(args.data_dir, download=args.download)
            parallel.train_and_evaluate(config, data, mesh=mesh, **kwargs)
    except Exception as e:
        if not parallel.is_initialized():
            raise
        # A dead peer can leave gloo/NCCL or the coordination service blocked at exit: say why, then leave, no teardown.
        from fashion_common.errors import FashionTwinsError

        from . import error_line

        expected = isinstance(e, (common.UsageError, FashionTwinsError, OSError, ValueError))
        if not expected or os.environ.get("FASHION_TWINS_TRACEBACK"):
            traceback.print_exc()
        print(error_line(e), file=sys.stderr, flush=True)
        os._exit(2 if expected else 1)
    parallel.shutdown()


def _finished(args, config: TrainConfig, counters: dict, out: str, sidecar: str, metrics: str) -> int:
    """--resume of a run that already has every epoch: nothing to train; copy it if --out is another file.

    The loop would run no epoch and so write nothing; saying `wrote` then would be a lie.
    """
    from fashion_common.checkpoint import copy_checkpoint
    from fashion_common.loop import write_json_atomic
    from fashion_common.paths import same_file

    done = f"{args.resume} already holds all {config.epochs} epochs"
    if same_file(args.resume, out):
        if copy_checkpoint(args.resume, out):  # its last write was interrupted between the sidecar and the weights
            print(f"[{args.backend}] {done}; nothing to train. Completed: wrote {out}")
        else:
            print(f"[{args.backend}] {done}; nothing to train, nothing written")
        return 0
    copy_checkpoint(args.resume, out)
    write_json_atomic(
        metrics,
        {
            "backend": args.backend,
            "copied_from": str(args.resume),
            "config": config.to_dict(),
            "epochs": counters.get("history", []),
        },
    )
    print(f"[{args.backend}] {done}; nothing to train. Copied: wrote {out}, {sidecar} and {metrics}")
    return 0
