"""Cross-framework tools: lockstep training, parity figures, benchmarks and the comparison report.

Imports both twins.
"""


def device_label(device: str) -> str:
    """What ran: the card as each framework names it, or the CPU with its cores and torch's threads."""
    import os
    import platform

    import torch

    if device == "gpu":
        import jax

        return f"torch: {torch.cuda.get_device_name(0)}; jax: {jax.devices('gpu')[0].device_kind}"
    return (
        f"cpu ({cpu_model() or platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        + (f"{torch.get_num_threads()})")
    )


def cpu_model() -> str | None:
    """The processor's name as Linux gives it ("AMD EPYC 7B13"); None where /proc/cpuinfo has none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() or None
    except OSError:
        return None
    return None


def set_matmul_precision(mode: str) -> None:
    """The same float32 matmul mode in both twins: "highest" (TF32 off, JAX highest) or "tf32"."""
    import fashion_flax
    import fashion_torch

    fashion_torch.set_matmul_precision(mode)
    fashion_flax.set_matmul_precision(mode)
