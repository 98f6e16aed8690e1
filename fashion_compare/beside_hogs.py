"""The benchmark twice in a row, alone and beside CPU hogs: how much each twin loses to a busy machine.

    python -m fashion_compare.beside_hogs [--hogs 2] [--repeats 3] [--out hogs.json] [-- BENCHMARK ARGS]

Runs `fashion-twins benchmark` (with the command line's `--threads auto` policy) once on the machine
as it is, then once more while --hogs processes spin (`while True: pass`, one core each), ends the
hogs, and prints, from the two runs' JSON, each variant's epoch time alone and beside the hogs, their
ratio (issue 13's target: each twin <= 3x its own time alone) and torch eager over flax beside the
hogs (target <= 2.5x). "Alone" means without the hogs, not idle: the load average at the start and
the end of each run and the share of the cores other processes took are printed beside it, so a
first run that was not idle says so. The two
benchmarks run one after the other, not interleaved: the hogs cannot be switched on and off inside
one benchmark process, so the idle figure and the busy one are minutes apart.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from fashion_common.runtime import machine_state
from fashion_compare.machine import others_text, window

# The variants whose times are compared alone and beside the hogs (benchmark JSON keys, without "_s").
VARIANTS = ("torch", "torch_compile", "torch_fused", "flax", "nnx", "tutorial", "floor")
HOG = "while True: pass"


def run_benchmark(out: Path, repeats: int, extra: list[str]) -> dict:
    """One `fashion-twins benchmark` in a fresh process: {"result": its JSON, "machine": the window around it}."""
    start = machine_state()
    cmd = [sys.executable, "-m", "fashion_twins", "benchmark", "--repeats", str(repeats), "--out", str(out), *extra]
    subprocess.run(cmd, check=True)
    # the benchmark is a waited child: its CPU time counts as this process's own, the hogs' as others'
    return {"result": json.loads(out.read_text()), "machine": window(start, machine_state())}


def start_hogs(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(n)]


def stop_hogs(hogs: list[subprocess.Popen]) -> None:
    for hog in hogs:
        hog.kill()
    for hog in hogs:
        hog.wait()


def _first_result(output: dict) -> dict:
    """The benchmark JSON's first precision's figures ({"results": [...], ...}); a bare result passes through."""
    return output["results"][0] if "results" in output else output


def ratios(alone: dict, busy: dict) -> dict:
    """Per variant: seconds alone, seconds beside the hogs, and busy / alone; torch eager / flax beside them.

    alone, busy: the two benchmark JSON documents (or their first result).
    """
    alone, busy = _first_result(alone), _first_result(busy)
    rows = {}
    for name in VARIANTS:
        a, b = alone.get(f"{name}_s"), busy.get(f"{name}_s")
        if a is not None and b is not None:
            rows[name] = {"alone_s": a, "busy_s": b, "busy_over_alone": b / a}
    out = {"variants": rows}
    if "torch" in rows and "flax" in rows:
        out["busy_torch_over_flax"] = rows["torch"]["busy_s"] / rows["flax"]["busy_s"]
        out["alone_torch_over_flax"] = rows["torch"]["alone_s"] / rows["flax"]["alone_s"]
    return out


def _load(state: dict) -> str:
    return "unknown" if state["load_1m"] is None else f"{state['load_1m']:.1f}"


def markdown(summary: dict, runs: dict, hogs: int) -> str:
    lines = [
        f"| variant | epoch alone | epoch beside {hogs} hogs | beside / alone |",
        "| --- | --- | --- | --- |",
    ]
    for name, row in summary["variants"].items():
        lines.append(f"| {name} | {row['alone_s']:.2f} s | {row['busy_s']:.2f} s | {row['busy_over_alone']:.2f} |")
    if "busy_torch_over_flax" in summary:
        lines.append("")
        lines.append(
            f"torch eager / flax: {summary['alone_torch_over_flax']:.2f} alone, "
            f"{summary['busy_torch_over_flax']:.2f} beside the hogs"
        )
    for label, run in runs.items():
        span = run["machine"]
        lines.append(
            f"{label}: load {_load(span['start'])} -> {_load(span['end'])} on {span['start']['usable_cores']} usable "
            f"cores (1-minute average){others_text(span)}"
        )
    return "\n".join(lines)


def main(argv: list | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hogs", type=int, default=2, help="CPU-bound processes beside the second run (default: 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per variant in each run (default: 3)")
    p.add_argument("--out", type=Path, help="also write both runs and the ratios here as JSON")
    args = p.parse_args(argv)
    if args.hogs < 1:
        p.error(f"argument --hogs: must be at least 1, got {args.hogs}")
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"alone": run_benchmark(Path(tmp) / "alone.json", args.repeats, extra)}
        hogs = start_hogs(args.hogs)
        try:
            runs[f"beside {args.hogs} hogs"] = run_benchmark(Path(tmp) / "busy.json", args.repeats, extra)
        finally:
            stop_hogs(hogs)  # never leave a hog spinning, whatever happened to the benchmark
    summary = ratios(runs["alone"]["result"], runs[f"beside {args.hogs} hogs"]["result"])
    print(markdown(summary, runs, args.hogs))
    if args.out is not None:
        payload = {"hogs": args.hogs, "runs": runs, **summary}
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
