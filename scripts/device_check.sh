#!/usr/bin/env bash
# The GPU checks in one go, for a CUDA machine with the packages already installed:
#   FASHION_TWINS_DATA=/path/to/fashion-mnist PYTHONPATH=. bash scripts/device_check.sh OUTDIR
# Runs `pytest -m gpu`, the benchmark in both precisions, a quick compare, and world-size-1
# distributed runs where the modules exist; each part has its own timeout so the whole stays
# under 8 minutes. Logs (PART.log) and JSON go under OUTDIR; OUTDIR/summary.txt lists each
# part's exit code (124 = timed out). Exits non-zero if any part failed.
set -uo pipefail
OUT=${1:?usage: bash scripts/device_check.sh OUTDIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH=${PYTHONPATH:-$PWD}
PY=${PYTHON:-python3}
FAILED=0
START=$(date +%s)

part() {  # part NAME SECONDS COMMAND...: run with a timeout, log to OUT/NAME.log, record the exit code
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/summary.txt"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "   $name: exit $rc after $(( $(date +%s) - t0 ))s" | tee -a "$OUT/summary.txt"
  [ $rc -eq 0 ] || FAILED=1
  tail -n 5 "$OUT/$name.log"
}

: >"$OUT/summary.txt"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"; } >"$OUT/gpu.txt" 2>&1
$PY - >"$OUT/versions.json" 2>&1 <<'PY'
import json, platform
import torch, jax, flax, optax
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                  "torch_gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                  "jax": jax.__version__, "jax_devices": [str(d) for d in jax.devices()], "flax": flax.__version__, "optax": optax.__version__}, indent=2))
PY
cat "$OUT/gpu.txt" "$OUT/versions.json"

# Under 8 minutes in all: 150 + 130 + 110 + 2 x 30 s = 450 s, plus the version probe.
part pytest_gpu 150 $PY -m pytest -q -m gpu -p no:cacheprovider --junitxml="$OUT/pytest_gpu.xml"
part benchmark 130 $PY -m fashion_twins benchmark --device gpu --precision both --repeats 3 --tutorial-repeats 1 --out "$OUT/benchmark.json"
part compare 110 $PY -m fashion_twins compare --device gpu --quick-epochs 1 --lockstep-steps 300 --out-dir "$OUT/report"

# World-size-1 distributed runs, only where the modules exist (another branch adds them).
if $PY -c "import fashion_torch.distributed" 2>/dev/null; then
  part torch_ddp_ws1 30 $PY -m torch.distributed.run --standalone --nproc-per-node 1 -m fashion_twins train --backend torch \
    --epochs 1 --limit-train 2048 --limit-test 512 --device gpu --quiet --out "$OUT/ddp_torch.safetensors" --metrics "$OUT/ddp_torch.json"
else
  echo "== torch_ddp_ws1: skipped (no fashion_torch.distributed)" | tee -a "$OUT/summary.txt"
fi
if $PY -c "import fashion_flax.distributed" 2>/dev/null; then
  part flax_sharded_ws1 30 $PY -m fashion_twins train --backend flax --devices 1 --epochs 1 --limit-train 2048 --limit-test 512 --device gpu --quiet \
    --out "$OUT/sharded_flax.safetensors" --metrics "$OUT/sharded_flax.json"
else
  echo "== flax_sharded_ws1: skipped (no fashion_flax.distributed)" | tee -a "$OUT/summary.txt"
fi

echo "total $(( $(date +%s) - START ))s; failed=$FAILED" | tee -a "$OUT/summary.txt"
exit $FAILED
