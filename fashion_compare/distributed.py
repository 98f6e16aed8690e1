"""Single device vs N-way data parallel, every twin: the max |dW| after the same steps, and the time per step.

torch: the twin's loop in this process vs `torchrun --nproc-per-node N -m fashion_twins train --backend torch`.
flax and nnx: the twin's loop in this process vs `python -m fashion_twins train --backend flax|nnx --devices N`
(one process; on a CPU, N simulated host devices). Every run starts from the torch twin's seed init
(saved once, passed as --init) and trains on the same global batches with plain SGD, highest
precision, so all six final weights should agree to float32 rounding.

On a CPU the N ranks or devices share the same cores: the figures show what data parallelism
costs (collectives, N copies of the step's overhead), not a speed-up. Wired into the report as
`compare --distributed N` (fashion_compare/stages.py; render.md_distributed writes its section);
alone: `python -m fashion_compare.distributed --world-size 2`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from fashion_common import checkpoint as canonical
from fashion_common import distributed as common
from fashion_common.config import tutorial_config
from fashion_common.metrics import max_weight_diff
from fashion_compare import device_label, set_matmul_precision

ROOT = Path(__file__).resolve().parent.parent


def _step_ms(metrics: dict, steps_per_epoch: int) -> float:
    """Per-step time of the LAST epoch (the first includes compilation, DDP's bucket setup, warm caches)."""
    return 1000.0 * metrics["epochs"][-1]["epoch_seconds"] / steps_per_epoch


def _run(cmd, env) -> None:
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:6])} ... failed ({result.returncode}): "
            f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ''}"
        )


def _single(backend: str, config, data, init_path: Path, folder: Path) -> tuple:
    """The twin's own single-device train_and_evaluate (in this process), from `init_path` -> (weights, metrics)."""
    train = importlib.import_module(f"fashion_{backend}.train")
    out = folder / f"{backend}_single.safetensors"
    _, metrics = train.train_and_evaluate(
        config, data, out=str(out), quiet=True, log=lambda line: None, init_from=str(init_path)
    )
    return canonical.read_state(out)[0], metrics


def distributed_comparison(
    world_size: int = 2,
    steps: int = 100,
    batch_size: int = 64,
    device: str = "cpu",
    data=None,
    data_dir=None,
    log=print,
) -> dict:
    """Train each twin on one device and N-way data-parallel for `steps` steps; compare weights and step times.

    Args:
      world_size: N, the torch ranks and the flax devices (on a GPU host: N GPUs, torch NCCL).
      steps: global steps per run, in two equal epochs (the timed one is the second).
      batch_size: the global batch; must be divisible by world_size (checked first).
      device: "cpu" (simulated ranks/devices on the same cores) or "gpu".
      data: FashionData (default: load it); data_dir: where to look for it.
    Returns:
      dict: per twin the single and parallel ms/step and max |dW|; the cross-framework |dW|; labels.
    """
    import torch

    import fashion_torch
    from fashion_common.data import load_fashion_mnist

    common.check_world(world_size, batch_size, "ranks/devices")
    steps_per_epoch = -(-steps // 2)
    config = tutorial_config(
        epochs=2, batch_size=batch_size, limit_train=steps_per_epoch * batch_size, limit_test=1000, device=device
    )
    data = load_fashion_mnist(data_dir) if data is None else data
    set_matmul_precision("highest")
    # fp32 matmuls in the subprocesses too (torch's default already is; JAX on a GPU would use TF32)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "JAX_DEFAULT_MATMUL_PRECISION": "highest",
    }
    env.pop("XLA_FLAGS", None)
    simulated = device == "cpu"
    with tempfile.TemporaryDirectory(prefix="fashion-distributed-") as tmp:
        folder = Path(tmp)
        init_path = folder / "init.safetensors"
        fashion_torch.save_checkpoint(fashion_torch.create_model(seed=config.seed), init_path)
        common_flags = [
            *common.config_flags(config),
            "--init",
            str(init_path),
            "--quiet",
            *(["--data-dir", str(data_dir)] if data_dir else []),
        ]
        train_cli = ["-m", "fashion_twins", "train", "--backend"]
        figures = {}
        # ---- torch: one device here, N ranks under torchrun
        log(f"[distributed] torch: 1 device, then torchrun with {world_size} ranks")
        # One intra-op thread, as each torchrun rank gets (OMP_NUM_THREADS=1): on 2 busy cores, 2 threads made
        # the single-device step 20x slower (150-500 ms vs 7 ms), which would flatter DDP.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            t_single, t_single_metrics = _single("torch", config, data, init_path, folder)
        finally:
            torch.set_num_threads(threads)
        ddp_out, ddp_metrics = folder / "torch_ddp.safetensors", folder / "torch_ddp.json"
        _run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc-per-node={world_size}",
                *train_cli,
                "torch",
                *common_flags,
                "--out",
                str(ddp_out),
                "--metrics",
                str(ddp_metrics),
            ],
            env,
        )
        t_ddp, t_ddp_metrics = canonical.read_state(ddp_out)[0], json.loads(ddp_metrics.read_text())
        # ---- flax and nnx: one device here, N devices in one process (forced host devices on a CPU)
        jax_runs = {}
        for twin in ("flax", "nnx"):
            log(f"[distributed] {twin}: 1 device, then a mesh of {world_size} devices")
            single, single_metrics = _single(twin, config, data, init_path, folder)
            sharded_out, sharded_metrics = folder / f"{twin}_sharded.safetensors", folder / f"{twin}_sharded.json"
            _run(
                [
                    sys.executable,
                    *train_cli,
                    twin,
                    *common_flags,
                    "--devices",
                    str(world_size),
                    "--out",
                    str(sharded_out),
                    "--metrics",
                    str(sharded_metrics),
                ],
                env,
            )
            sharded = canonical.read_state(sharded_out)[0], json.loads(sharded_metrics.read_text())
            jax_runs[twin] = (single, sharded[0], single_metrics, sharded[1])

        for name, single, parallel, s_metrics, p_metrics in (
            ("torch", t_single, t_ddp, t_single_metrics, t_ddp_metrics),
            *((twin, *run) for twin, run in jax_runs.items()),
        ):
            figures[name] = {
                "single_device": s_metrics["device"],
                "parallel_device": p_metrics["device"],
                "single_ms_per_step": _step_ms(s_metrics, steps_per_epoch),
                "parallel_ms_per_step": _step_ms(p_metrics, steps_per_epoch),
                "max_abs_dW_parallel_vs_single": max_weight_diff(single, parallel),
                "final_test_accuracy": {
                    "single": s_metrics["epochs"][-1]["test_accuracy"],
                    "parallel": p_metrics["epochs"][-1]["test_accuracy"],
                },
            }
    return {
        "world_size": world_size,
        "steps": 2 * steps_per_epoch,
        "batch_size": batch_size,
        "per_rank_batch": batch_size // world_size,
        "config": "tutorial plain SGD, lr 1e-3, constant, highest precision, same init (torch seed 0) and batch order",
        "device": device_label(device),
        "torch_threads_per_process": 1,
        "simulated": simulated,
        "note": (
            f"simulated: {world_size} torch gloo ranks and {world_size} JAX host devices share the same "
            f"{os.cpu_count()} CPU cores; "
            "step times show the cost of data parallelism here, not a speed-up"
            if simulated
            else f"{world_size} GPUs: torch NCCL ranks, one JAX process over {world_size} devices"
        ),
        "torch": figures["torch"],
        "flax": figures["flax"],
        "nnx": figures["nnx"],
        "max_abs_dW_torch_ddp_vs_flax_sharded": max_weight_diff(t_ddp, jax_runs["flax"][1]),
        "max_abs_dW_torch_single_vs_flax_single": max_weight_diff(t_single, jax_runs["flax"][0]),
        "max_abs_dW_torch_ddp_vs_nnx_sharded": max_weight_diff(t_ddp, jax_runs["nnx"][1]),
        "max_abs_dW_flax_sharded_vs_nnx_sharded": max_weight_diff(jax_runs["flax"][1], jax_runs["nnx"][1]),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fashion_compare.distributed", description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=2, help="ranks / devices (default: 2)")
    parser.add_argument("--steps", type=int, default=100, help="global steps per run (default: 100)")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch (default: 64)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="(default: cpu)")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: the usual search)")
    parser.add_argument("--json", default=None, help="also write the figures here (default: none)")
    args = parser.parse_args(argv)
    from fashion_common.errors import FashionTwinsError

    try:
        result = distributed_comparison(
            args.world_size,
            args.steps,
            args.batch_size,
            args.device,
            data_dir=args.data_dir,
            log=lambda s: print(s, file=sys.stderr),
        )
    except (FashionTwinsError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from fashion_compare.render import md_distributed

    print("\n".join(md_distributed(result)))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
