"""The device check's verdicts and figures, read from the files it returns (scripts/device_check.sh calls this).

    python3 scripts/device_verdict.py preflight OUTDIR [--rehearse]   # write preflight.json; no GPU: one line, exit 2
    python3 scripts/device_verdict.py pytest OUTDIR [--rehearse]      # junit.xml: failures, errors, skips
    python3 scripts/device_verdict.py compare OUTDIR                   # report.json: every check passed
    python3 scripts/device_verdict.py figures OUTDIR [--rehearse]     # every figure a GPU user wants is there

Each verdict prints lines for summary.txt and exits 1 when it fails. On the device a skipped GPU test,
a failed compare check or a missing figure is a failure; in the rehearsal (the CPU) only the CUDA-only
cases may skip (their reason starts with CUDA_ONLY, as tests/conftest.py writes it) and the CUDA-only
figures (cuda_graph, peak device memory) may be missing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

CUDA_ONLY = "CUDA only"  # tests/conftest.py's skip reason prefix
PACKAGES = ("torch", "triton", "jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax", "numpy")


def version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def nvidia_smi() -> dict:
    """The card as nvidia-smi names it (name, driver, memory), or why not."""
    query = "name,driver_version,memory.total,memory.used"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"nvidia-smi: {e}"}
    if out.returncode != 0:
        return {"error": f"nvidia-smi exit {out.returncode}: {out.stderr.strip()[:200]}"}
    fields = [f.strip() for f in out.stdout.strip().splitlines()[0].split(",")]
    return dict(zip(("name", "driver", "memory_total", "memory_used"), fields, strict=False))


def preflight(out: Path, rehearse: bool) -> int:
    """preflight.json: card, driver, CUDA, package versions, what each framework sees, GPU memory."""
    record = {"rehearsal": rehearse, "versions": {p: version(p) for p in PACKAGES}, "nvidia_smi": nvidia_smi()}
    import torch

    record["torch_cuda"] = torch.version.cuda
    record["torch_sees_cuda"] = torch.cuda.is_available()
    if record["torch_sees_cuda"]:
        free, total = torch.cuda.mem_get_info(0)
        record["card"] = torch.cuda.get_device_name(0)
        record["gpu_memory"] = {"total_bytes": total, "free_bytes": free}
    import jax

    record["jax_backend"] = jax.default_backend()
    record["jax_devices"] = [str(d) for d in jax.devices()]
    try:
        record["jax_gpu"] = str(jax.devices("gpu")[0])
    except RuntimeError:
        record["jax_gpu"] = None
    (out / "preflight.json").write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"   card {record.get('card', 'none')}; torch {record['versions']['torch']} CUDA {record['torch_cuda']}; "
        f"jax {record['versions']['jax']} on {record['jax_backend']}"
    )
    if rehearse:
        return 0
    if not record["torch_sees_cuda"]:
        print("error: torch sees no CUDA device; this is no GPU machine (use --rehearse OUTDIR on a CPU)")
        return 2
    if record["jax_gpu"] is None:
        print("error: JAX sees no GPU (is the jax CUDA plugin installed?); the JAX twins would run on the CPU")
        return 2
    return 0


def pytest_verdict(out: Path, rehearse: bool) -> int:
    path = out / "junit.xml"
    if not path.is_file():
        print("   FAIL pytest: no junit.xml (killed before the session ended?)")
        return 1
    cases = list(ET.parse(path).getroot().iter("testcase"))
    bad, passed = [], 0
    for case in cases:
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag: child for child in case if child.tag in ("failure", "error", "skipped")}
        if "failure" in kinds or "error" in kinds:
            bad.append(f"{name}: {'failed' if 'failure' in kinds else 'error'}")
        elif "skipped" in kinds:
            reason = kinds["skipped"].get("message", "")
            if not (rehearse and reason.startswith(CUDA_ONLY)):
                bad.append(f"{name}: skipped ({reason})")
        else:
            passed += 1
    print(f"   pytest: {passed} passed of the {len(cases)} in junit.xml")
    for line in bad:
        print(f"   FAIL {line}")
    return 1 if bad or passed == 0 else 0


def compare_verdict(out: Path) -> int:
    path = out / "report.json"
    if not path.is_file():
        print("   FAIL compare: no report.json")
        return 1
    checks = json.loads(path.read_text()).get("checks", [])
    failed = [c for c in checks if not c.get("passed")]
    print(f"   compare: {len(checks) - len(failed)} of {len(checks)} checks passed")
    for c in failed:
        print(f"   FAIL check {c['stage']}: {c['name']} = {c['value']:.3g} > {c['tolerance']:.3g}")
    return 1 if failed or not checks else 0


def load(out: Path, name: str) -> dict:
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return {}


def figures(out: Path, rehearse: bool) -> int:
    """Print each figure a GPU user wants (one line each); a missing one is a FAIL line."""
    lines, missing = [], []

    def need(what: str, value, cuda_only: bool = False):
        if value is None:
            if not (rehearse and cuda_only):
                missing.append(what)
            return
        lines.append(f"   {what}: {value}")

    engines = ("eager", "compile", "cuda_graph")
    for precision in ("highest", "tf32"):
        bench = (load(out, f"benchmark-{precision}.json").get("results") or [{}])[0]
        need(f"benchmark {precision}: matmul precision", bench.get("matmul_precision"))
        for twin in ("torch", "flax", "nnx"):
            need(f"benchmark {precision}: {twin} epoch s", _fmt(bench.get(f"{twin}_s")))
        for e in engines:
            s, c = bench.get(f"torch_{e}_s"), bench.get(f"torch_{e}_compile_s")
            need(f"benchmark {precision}: torch {e} epoch s / cold compile s", _pair(s, c), e == "cuda_graph")
        need(f"benchmark {precision}: tutorial DataLoader epoch s", _fmt(bench.get("tutorial_s")))
        run = bench.get("default_run") or {}
        need(
            f"benchmark {precision}: default-recipe run estimate s (fastest engine)",
            _fmt((run.get(run.get("fastest"), {}) or {}).get("run_s")),
        )
    tta = load(out, "benchmark-highest.json").get("time_to_accuracy") or []
    for twin in ("torch", "flax", "nnx"):
        entry = next((t for t in tta if t.get("backend") == twin), None)
        need(
            f"time to 89 % (fast recipe), {twin} s",
            None
            if entry is None
            else f"{entry['train_seconds']:.2f} ({'reached' if entry['reached'] else 'NOT reached'} in "
            f"{entry['epochs']} epochs)",
        )
    gpu = load(out, "gpu_parity.json")
    for precision in ("highest", "tf32"):
        for twin in ("flax", "nnx"):
            diffs = (gpu.get(f"parity_{precision}") or {}).get(f"torch vs {twin}")
            need(
                f"parity {precision}: torch vs {twin} max |diff|", None if diffs is None else _fmt(max(diffs.values()))
            )
    report = load(out, "report.json").get("parity") or {}
    need("report.json parity precisions", report.get("precisions"))
    for e in engines:
        ls = (gpu.get("lockstep_highest") or {}).get(f"torch {e} vs flax")
        need(
            f"lockstep torch {e} vs flax: max loss diff / final weight diff",
            None if ls is None else _pair(ls["max_loss_diff"], ls["final_weight_diff"]),
            e == "cuda_graph",
        )
    for twin in ("torch", "flax", "nnx"):
        mem = (gpu.get("peak_memory_bytes") or {}).get(twin)
        need(f"peak device memory {twin} MiB", None if mem is None else f"{mem['peak_bytes'] / 2**20:.1f}", True)
    print("\n".join(lines))
    for what in missing:
        print(f"   FAIL missing figure: {what}")
    return 1 if missing else 0


def _fmt(x):
    return None if x is None else f"{x:.4g}"


def _pair(a, b):
    return None if a is None or b is None else f"{a:.4g} / {b:.4g}"


def main(argv: list[str]) -> int:
    kind, out = argv[0], Path(argv[1])
    rehearse = "--rehearse" in argv[2:]
    if kind == "preflight":
        return preflight(out, rehearse)
    if kind == "pytest":
        return pytest_verdict(out, rehearse)
    if kind == "compare":
        return compare_verdict(out)
    if kind == "figures":
        return figures(out, rehearse)
    print(f"error: unknown verdict {kind!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
