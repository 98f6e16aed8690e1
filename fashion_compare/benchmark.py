"""Speed, measured side by side in one process: the tutorial's loop, each torch engine, flax, nnx, and the FLOP floor.

The workload is one epoch of the 784-512-512-10 MLP at batch 64 with plain SGD over the 60,000
training images. Every variant is warmed up once (which also pays for compilation), then timed for
`repeats` epochs, interleaved (A B C A B C ..., so a change of load hits every variant alike), and
reported as the median with its min and max, on the same device, in the same run, with the same
threads. The FLOP floor is measured once per round too, with those threads, and is the best of all
its tries (a floor is a best case). The machine's load at the start and end is recorded beside it.
The torch rows are the twin's engines: eager, compile (torch.compile), cuda_graph (CUDA only) through
autograd and torch.optim, and fused, the opt-in hand-written backward, shown as what a compiler leaves
on the table. `torch_s` is the engine `engine="auto"` picks on the device.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from fashion_common.config import TrainConfig, tutorial_config
from fashion_common.data import FashionData, batch_order, prepare_raw
from fashion_common.loop import epoch_shifts
from fashion_common.runtime import machine_state, thread_report
from fashion_common.spec import TUTORIAL_PARAMETER_COUNT
from fashion_compare import device_label, set_matmul_precision
from fashion_compare.machine import busy_warning, others_text, why_busy, window

# forward (2 FLOPs per weight per example) + backward (4): 6 * params * examples
EPOCH_FLOPS = 6 * TUTORIAL_PARAMETER_COUNT * 60_000


def median_time(run_epoch: Callable[[int], None], repeats: int = 3, warmup: int = 1) -> list[float]:
    """Seconds of each timed call of run_epoch(epoch); run_epoch must block until its device is done."""
    return time_epochs(run_epoch, repeats, warmup)[1]


def time_epochs(run_epoch: Callable[[int], None], repeats: int = 3, warmup: int = 1):
    """(seconds of the warm-up calls, [seconds of each timed call]); the warm-up pays for compilation."""
    start = time.perf_counter()
    for i in range(warmup):
        run_epoch(-1 - i)
    warmup_s = time.perf_counter() - start
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        run_epoch(i)
        times.append(time.perf_counter() - start)
    return warmup_s, times


def torch_engines(device: str) -> list[str]:
    """The torch engines that run on the device: eager, compile, cuda_graph (CUDA only) and the hand-written fused."""
    return ["eager", "compile", "cuda_graph", "fused"] if device == "gpu" else ["eager", "compile", "fused"]


def default_torch_engine(device: str) -> str:
    """What engine="auto" picks on this device."""
    from fashion_torch.train import AUTO_ENGINE

    return AUTO_ENGINE["cuda" if device == "gpu" else "cpu"]


# ----------------------------------------------------------------------------- the matmul ceiling


def matmul_rate(device: str, precision: str, n: int | None = None, repeats: int = 5) -> dict[str, float]:
    """Best fp32 (or tf32) matmul FLOP/s of an n x n x n product over `repeats` tries, through torch and through JAX.

    The larger is the ceiling. Best, not median: a floor is what the hardware can do, and on a shared
    machine every slower try measures the load, not the hardware.
    """
    import jax
    import jax.numpy as jnp
    import torch

    import fashion_flax

    set_matmul_precision(precision)
    n = n or (8192 if device == "gpu" else 2048)
    rng = np.random.default_rng(0)
    a_np, b_np = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    rates = {}

    t_dev = "cuda" if device == "gpu" else "cpu"
    a, b = torch.from_numpy(a_np).to(t_dev), torch.from_numpy(b_np).to(t_dev)
    sync = torch.cuda.synchronize if t_dev == "cuda" else (lambda: None)

    def torch_mm(_):
        torch.mm(a, b)
        sync()

    rates["torch"] = 2 * n**3 / min(median_time(torch_mm, repeats))

    j_dev = fashion_flax.resolve_device(device)
    ja, jb = jax.device_put(a_np, j_dev), jax.device_put(b_np, j_dev)
    dot = jax.jit(jnp.dot)
    rates["jax"] = 2 * n**3 / min(median_time(lambda _: dot(ja, jb).block_until_ready(), repeats))
    rates["ceiling"] = max(rates["torch"], rates["jax"])
    rates["n"] = n
    return rates


# ----------------------------------------------------------------------------- the variants


def tutorial_epoch_fn(device: str, data_dir=None, num_train: int | None = None) -> Callable[[int], None]:
    """The tutorial's own loop: torchvision dataset + ToTensor + DataLoader(batch 64, shuffle), eager SGD lr 1e-3.

    num_train: the first N training images only (the benchmark's --limit-train), else all 60,000.
    """
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets
    from torchvision.transforms import ToTensor

    import fashion_torch

    root = prepare_raw(data_dir)
    training_data = datasets.FashionMNIST(str(root), train=True, download=False, transform=ToTensor())
    if num_train is not None and num_train < len(training_data):
        training_data = Subset(training_data, range(num_train))
    t_dev = "cuda" if device == "gpu" else "cpu"
    model = fashion_torch.NeuralNetwork().to(t_dev)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)

    def run(_epoch):
        loader = DataLoader(training_data, batch_size=64, shuffle=True, generator=generator)
        model.train()
        for X, y in loader:
            X, y = X.to(t_dev), y.to(t_dev)
            loss = loss_fn(model(X), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        if t_dev == "cuda":
            torch.cuda.synchronize()

    return run


def twin_epoch_fn(
    backend: str, data: FashionData, device: str, config: TrainConfig | None = None, engine: str | None = None
) -> Callable[[int], None]:
    """One epoch of a twin's own training path (quiet: no progress bar), data already on the device.

    engine: the torch engine (fashion_torch.train.ENGINES); None for the twin's default (flax has one).
    """
    import importlib

    train = importlib.import_module(f"fashion_{backend}.train")
    pkg = importlib.import_module(f"fashion_{backend}")
    config = config or tutorial_config(epochs=1, device=device)
    dev = pkg.resolve_device(device)
    on_device = train.put_data(data, dev)
    steps = config.steps_per_epoch(len(data.train_labels))
    options = {} if engine is None else {"engine": engine}  # a torch-only argument
    holder = {"state": train.create_train_state(config, device=dev, total_steps=steps * 100, **options)}

    def run(epoch):
        order = batch_order(config.seed, epoch + 10, len(data.train_labels), config.batch_size)
        shifts = epoch_shifts(config, epoch + 10, steps)  # the recipe's augmentation, as the loop applies it
        holder["state"], _ = train.train_epoch(
            holder["state"], on_device, order, config, None, shifts
        )  # returns host floats: synced

    return run


def compile_seconds(
    backend: str, config: TrainConfig, data: FashionData, device: str, steps: int = 5, engine: str | None = None
) -> float:
    """Cold compile/JIT seconds of one twin variant, on its own: the first training step on a fresh state, with the
    compiler caches emptied, minus the median of the next `steps` steps (the same shapes, so nothing recompiles).

    The warm-up epoch minus a timed epoch hid it: flax's ~0.3 s of XLA compilation sank in the noise of a
    busy CPU's epoch and printed 0.00 s. Eager and fused torch compile nothing: theirs is first-call overhead.
    torch.compile's inductor also keeps an on-disk cache that dynamo's reset does not empty: measured on the busy
    2-core CPU, 23 s for the first compile on a machine, 2.1 s for a repeat (what a user's second run pays).
    """
    import importlib

    train = importlib.import_module(f"fashion_{backend}.train")
    pkg = importlib.import_module(f"fashion_{backend}")
    if backend in ("flax", "nnx"):
        import jax

        jax.clear_caches()  # else an earlier variant or precision mode may have compiled the same program
    else:
        import torch

        torch._dynamo.reset()  # the same for torch.compile's graphs
    dev = pkg.resolve_device(device)
    on_device = train.put_data(data, dev)
    options = {} if engine is None else {"engine": engine}  # the torch engine, a torch-only argument
    total = config.steps_per_epoch(len(data.train_labels))
    state = train.create_train_state(config, device=dev, total_steps=total, **options)
    order = batch_order(config.seed, 0, len(data.train_labels), config.batch_size)[: steps + 1]  # (steps + 1, B)
    if len(order) < 2:
        raise ValueError(f"compile_seconds needs 2 batches of {config.batch_size}; the data has {len(order)}")
    steps = len(order) - 1
    shifts = epoch_shifts(config, 0, len(order))  # (steps + 1, B, 2) or None

    def one_step(i: int) -> float:
        nonlocal state
        start = time.perf_counter()
        rows = slice(i, i + 1)
        state, _ = train.train_epoch(
            state, on_device, order[rows], config, None, None if shifts is None else shifts[rows]
        )
        return time.perf_counter() - start  # train_epoch returns host floats: the device is done

    first = one_step(0)
    return max(0.0, first - statistics.median(one_step(i) for i in range(1, steps + 1)))


def variant_compile_seconds(name: str, data: FashionData, device: str) -> float | None:
    """compile_seconds of a variant (torch_<engine>, flax or nnx) on the tutorial's recipe; None for tutorial."""
    if name == "tutorial":
        return None  # the tutorial's own eager loop: nothing is compiled
    backend, engine = (name, None) if name in ("flax", "nnx") else ("torch", name.removeprefix("torch_"))
    return compile_seconds(backend, tutorial_config(epochs=1, device=device), data, device, engine=engine)


def benchmark(
    data: FashionData,
    device: str = "cpu",
    precision: str = "fp32",
    repeats: int = 3,
    tutorial_repeats: int | None = None,
    data_dir=None,
    log=print,
) -> dict:
    """Time every variant for one precision mode; returns the JSON object the README's table is built from.

    Keys: <variant>_s (median epoch seconds), <variant>_times, <variant>_step_ms, <variant>_warmup_s
    and <variant>_compile_s (cold compile/JIT, measured apart: see compile_seconds; None for the
    tutorial's eager loop, which compiles nothing) for tutorial, flax, nnx and torch_<engine>; torch_s is
    the default engine's; floor_s the FLOP floor; and the ratios.
    """
    set_precision(precision)
    machine_start = machine_state()
    mode = {"fp32": "highest", "tf32": "tf32"}[precision]
    num_train = len(data.train_labels)  # 60,000 unless the caller limited the data (a rehearsal's small sizes)
    steps = num_train // 64
    epoch_flops = EPOCH_FLOPS * num_train // 60_000
    engines = torch_engines(device)
    default = default_torch_engine(device)
    result = {
        "device": device_label(device),
        "precision": precision,
        "matmul_precision": mode,  # the name TrainConfig.precision, METRICS.json and report.json use
        "num_train": num_train,
        "steps_per_epoch": steps,
        "repeats": repeats,
        "torch_engines": engines,
        "torch_default_engine": default,
    }

    log(f"[benchmark] {precision}: matmul ceiling")
    rates = matmul_rate(device, mode)
    result["matmul_flops"] = rates
    variants = [
        (
            f"torch_{e}",
            lambda e=e: twin_epoch_fn("torch", data, device, tutorial_config(epochs=1, device=device), engine=e),
            repeats,
        )
        for e in engines
    ]
    variants += [
        ("flax", lambda: twin_epoch_fn("flax", data, device), repeats),
        ("nnx", lambda: twin_epoch_fn("nnx", data, device), repeats),  # in the same interleaved rounds as flax
        ("tutorial", lambda: tutorial_epoch_fn(device, data_dir, num_train), tutorial_repeats or repeats),
    ]
    floor_times = [epoch_flops / rates["ceiling"]]

    def floor_round():
        """One more try of the matmul rate, between the rounds of epochs: the floor is the best of all tries."""
        more = matmul_rate(device, mode, rates["n"], repeats=3)
        floor_times.append(epoch_flops / more["ceiling"])
        for k in ("torch", "jax", "ceiling"):
            rates[k] = max(rates[k], more[k])

    for name, _, _ in variants:  # cold compile/JIT, each variant on its own, before any timed epoch
        log(f"[benchmark] {precision}: {name} compile/JIT, measured apart")
        result[f"{name}_compile_s"] = variant_compile_seconds(name, data, device)
    runs = interleaved_epochs(
        {name: (make, n) for name, make, n in variants},
        log=lambda m: log(f"[benchmark] {precision}: {m}"),
        between=floor_round,
    )
    for name, (warmup_s, times) in runs.items():
        add_figures(result, name, times, steps)
        result[f"{name}_warmup_s"] = warmup_s  # the warm-up epoch as a whole: compilation plus one epoch and noise
    for key in ("s", "times", "step_ms", "min_s", "max_s"):  # not compile_s: torch_compile_s is the compile engine's
        result[f"torch_{key}"] = result[f"torch_{default}_{key}"]
    add_floor(result, floor_times, steps)
    result["tutorial_over_flax"] = result["tutorial_s"] / result["flax_s"]
    result["tutorial_over_torch"] = result["tutorial_s"] / result["torch_s"]
    result["torch_over_flax"] = result["torch_s"] / result["flax_s"]
    result["flax_over_floor"] = result["flax_s"] / result["floor_s"]
    result["nnx_over_flax"] = result["nnx_s"] / result["flax_s"]  # the NNX twin's target: <= 1.1
    result["nnx_over_floor"] = result["nnx_s"] / result["floor_s"]
    for e in engines:
        result[f"torch_{e}_over_flax"] = result[f"torch_{e}_s"] / result["flax_s"]
    result["machine"] = window(machine_start, machine_state())  # the epochs and the floor, not default_run
    result["threads"] = thread_report()
    result["busy_warning"] = busy_warning([result["machine"]])
    result["default_run"] = default_run_estimate(data, device, [e for e in engines if e != "fused"], log=log)
    return result


def add_figures(result: dict, name: str, times: list, steps: int) -> None:
    """<name>_s (median), _min_s, _max_s, _times and _step_ms (median) from the timed epochs of one variant."""
    result[f"{name}_s"] = statistics.median(times)
    result[f"{name}_min_s"], result[f"{name}_max_s"] = min(times), max(times)
    result[f"{name}_times"] = list(times)
    result[f"{name}_step_ms"] = 1e3 * result[f"{name}_s"] / steps


def add_floor(result: dict, floor_times: list, steps: int) -> None:
    """floor_s is the best (smallest) of all tries, not their median: a floor is a best case; plus every try."""
    result["floor_s"] = min(floor_times)
    result["floor_times"] = list(floor_times)
    result["floor_min_s"], result["floor_max_s"] = min(floor_times), max(floor_times)
    result["floor_step_ms"] = 1e3 * result["floor_s"] / steps


def interleaved_rounds(repeats: dict) -> list[list]:
    """The timing order, {name: timed epochs} -> rounds: round r runs every variant that wants an r-th epoch.

    {"a": 3, "b": 3, "c": 1} -> [["a", "b", "c"], ["a", "b"], ["a", "b"]], i.e. A B C A B A B.
    """
    return [[name for name in repeats if r < repeats[name]] for r in range(max(repeats.values(), default=0))]


def interleaved_epochs(variants: dict, log=print, between: Callable[[], None] | None = None) -> dict:
    """{name: (make, repeats)} -> {name: (warm-up seconds, [timed epoch seconds])}, the epochs interleaved.

    Every variant is built and warmed up first (compilation paid there), then timed round by round;
    between() runs after each round (the floor's next try: one before the rounds, one after each).
    """
    fns, warmups, times = {}, {}, {}
    for name, (make, n) in variants.items():
        log(f"{name}: build and warm up ({n} timed epochs to come, interleaved)")
        fns[name] = make()
        start = time.perf_counter()
        fns[name](-1)
        warmups[name], times[name] = time.perf_counter() - start, []
    rounds = interleaved_rounds({name: n for name, (_, n) in variants.items()})
    for names in rounds:
        for name in names:
            start = time.perf_counter()
            fns[name](len(times[name]))
            times[name].append(time.perf_counter() - start)
            log(f"{name}: epoch {len(times[name])} {times[name][-1]:.2f} s")
        if between is not None:
            between()
    return {name: (warmups[name], times[name]) for name in variants}


def default_run_estimate(data: FashionData, device: str, engines: list[str], repeats: int = 1, log=print) -> dict:
    """What engine="auto" is chosen by: each engine on the default recipe (TrainConfig()), seconds for
    the whole run = warm-up/compile cost + config.epochs x the median epoch.
    """
    config = TrainConfig(device=device)
    out = {}
    for e in engines:
        log(f"[benchmark] default recipe, torch {e}: {repeats} timed epoch(s) after 1 warm-up")
        warmup_s, times = time_epochs(twin_epoch_fn("torch", data, device, config, engine=e), repeats)
        epoch_s = statistics.median(times)
        out[e] = {
            "epoch_s": epoch_s,
            "compile_s": max(0.0, warmup_s - epoch_s),
            "run_s": max(0.0, warmup_s - epoch_s) + config.epochs * epoch_s,
        }
    out["fastest"] = min(engines, key=lambda e: out[e]["run_s"])
    return out


def time_to_accuracy(
    backend: str, data: FashionData, device: str, target: float = 0.89, config: TrainConfig | None = None, log=print
) -> dict:
    """Training seconds (compilation and evaluation excluded) until the test accuracy first reaches `target`."""
    import importlib

    train = importlib.import_module(f"fashion_{backend}.train")
    pkg = importlib.import_module(f"fashion_{backend}")
    config = config or TrainConfig(device=device)
    dev = pkg.resolve_device(device)
    on_device = train.put_data(data, dev)
    steps = config.steps_per_epoch(len(data.train_labels))
    total = steps * config.epochs
    # Warm-up on a throwaway state with the same shapes, so compilation is not counted.
    warm = train.create_train_state(config, device=dev, total_steps=total)
    warm, _ = train.train_epoch(
        warm,
        on_device,
        batch_order(config.seed + 1, 0, len(data.train_labels), config.batch_size),
        config,
        None,
        epoch_shifts(config, 0, steps),
    )  # flax donates the state it is given
    train.evaluate(warm, on_device, config)
    state = train.create_train_state(config, device=dev, total_steps=total)
    seconds, curve, machine_start = 0.0, [], machine_state()
    for epoch in range(1, config.epochs + 1):
        order = batch_order(config.seed, epoch, len(data.train_labels), config.batch_size)
        start = time.perf_counter()
        state, _ = train.train_epoch(
            state, on_device, order, config, None, epoch_shifts(config, epoch, steps)
        )  # as the loop trains
        seconds += time.perf_counter() - start
        accuracy = train.evaluate(state, on_device, config)["test_accuracy"]
        curve.append({"epoch": epoch, "train_seconds": seconds, "test_accuracy": accuracy})
        log(
            f"[{backend}] time-to-{100 * target:.0f}%: epoch {epoch} test_acc {100 * accuracy:.2f}% after "
            f"{seconds:.2f}s of training"
        )
        if accuracy >= target:
            break
    reached = bool(curve) and curve[-1]["test_accuracy"] >= target
    return {
        "backend": backend,
        "target": target,
        "reached": reached,
        "epochs": len(curve),
        "train_seconds": seconds,
        "curve": curve,
        "config": config.to_dict(),
        "machine": window(machine_start, machine_state()),
        "threads": thread_report(),
    }


def pick_device(name: str = "auto") -> str:
    """ "auto" -> "gpu" when both torch and JAX see one, else "cpu"; "gpu" without one is a DeviceError."""
    import fashion_flax
    import fashion_torch

    if name == "auto":
        return "gpu" if fashion_torch.get_device() == "cuda" and fashion_flax.get_device() == "gpu" else "cpu"
    if name == "gpu":
        fashion_torch.resolve_device("gpu")
        fashion_flax.resolve_device("gpu")
    return name


def set_precision(precision: str) -> None:
    """ "fp32" (torch TF32 off, JAX highest) or "tf32" (TF32 in both), the same mode in both twins."""
    set_matmul_precision({"fp32": "highest", "tf32": "tf32"}[precision])


def add_plain_epoch_ratios(rows: list[dict], result: dict, recipe: str) -> None:
    """Each time-to-accuracy row gets its recipe's name and its seconds over that twin's plain-SGD epoch in `result`.

    The twin's plain-SGD epoch is the benchmark's own (torch: the default engine), from the same run, so
    the ratio holds the load constant: the target is <= 6.
    """
    for row in rows:
        plain = result[f"{row['backend']}_s"]  # torch_s, flax_s or nnx_s
        row["recipe"] = recipe
        row["plain_epoch_s"] = plain
        row["over_plain_epoch"] = row["train_seconds"] / plain


def markdown_time_to_accuracy(rows: list[dict]) -> str:
    lines = [
        "| twin | recipe | target | reached | epochs | training seconds | / plain-SGD epoch | load start → end |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ratio = f"{r['over_plain_epoch']:.2f}" if "over_plain_epoch" in r else "-"
        span = r.get("machine") or {}
        load = f"{span['start']['load_1m']} → {span['end']['load_1m']}" if span else "-"
        lines.append(
            f"| {r['backend']} | {r.get('recipe', '-')} | {100 * r['target']:.0f}% | {'yes' if r['reached'] else 'no'} "
            f"| {r['epochs']} | {r['train_seconds']:.2f} | {ratio} | {load} |"
        )
    if any((r.get("machine") or {}).get("busy") for r in rows):
        lines += [
            "",
            f"**WARNING: {busy_warning([r['machine'] for r in rows])}** ({why_busy([r['machine'] for r in rows])})",
        ]
    return "\n".join(lines)


def machine_lines(r: dict) -> list[str]:
    """Under a table: the threads, the load at its start and end, other processes' share, and the busy warning."""
    if "machine" not in r:
        return []
    start, end, threads = r["machine"]["start"], r["machine"]["end"], r.get("threads") or {}
    lines = [
        "",
        f"threads: torch {threads.get('torch_threads')} ({threads.get('policy')}); "
        f"load {start['load_1m']} -> {end['load_1m']} on {start['usable_cores']} usable cores"
        f"{others_text(r['machine'])}; floor = best of "
        f"{len(r.get('floor_times', []))} tries",
    ]
    if r.get("busy_warning"):
        lines += ["", f"**WARNING: {r['busy_warning']}** ({why_busy([r['machine']])})"]
    return lines


def markdown_table(results: list[dict]) -> str:
    """One table per precision mode: each variant's epoch seconds, ms per step, compile cost, ratios to flax, floor."""
    blocks = []
    for r in results:
        lines = [
            f"{r['device']}, {r['precision']} (torch engine auto = {r['torch_default_engine']})",
            "",
            "| variant | epoch, median (min–max) | per step | compile/JIT (cold, measured apart) | / flax | / floor |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        names = ["tutorial"] + [f"torch_{e}" for e in r["torch_engines"]] + ["flax", "nnx", "floor"]
        for k in (k for k in names if k + "_s" in r):  # a result from before the NNX twin has no nnx_s
            label = {
                "tutorial": "tutorial loop (DataLoader, eager)",
                "flax": "flax (jit + lax.scan)",
                "nnx": "nnx (nnx.jit, split/merge + lax.scan)",
                "floor": "FLOP floor",
            }.get(k, k.replace("torch_", "torch "))
            if k == f"torch_{r['torch_default_engine']}":
                label += " (default)"
            if k == "torch_fused":
                label += " (hand-written backward)"
            compile_s = f"{r[k + '_compile_s']:.2f} s" if r.get(k + "_compile_s") is not None else "- (none)"
            span = f" ({r[k + '_min_s']:.2f}–{r[k + '_max_s']:.2f})" if k + "_min_s" in r else ""
            lines.append(
                f"| {label} | {r[k + '_s']:.3f} s{span} | {r[k + '_step_ms']:.2f} ms | {compile_s} | "
                f"{r[k + '_s'] / r['flax_s']:.2f} | {r[k + '_s'] / r['floor_s']:.2f} |"
            )
        lines += machine_lines(r)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
