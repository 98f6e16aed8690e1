#!/usr/bin/env bash
# The GPU checks in one shot, for a lent CUDA machine (one command, <= 10 minutes, <= 8 files back):
#   bash scripts/device_check.sh OUTDIR              # on the GPU: cuda for torch, the GPU for JAX
#   bash scripts/device_check.sh --rehearse OUTDIR   # the same parts, order and files on the CPU, small sizes
# The data: $FASHION_TWINS_DATA if set, else ./data (git-ignored), holding the four Fashion-MNIST .gz files.
# Parts, each under its own timeout (SIGINT first, so pytest still writes its junit; SIGKILL 5 s later):
#   preflight, pytest -m gpu, benchmark at highest (+ time to 89 %), benchmark at tf32, compare,
#   torch DDP at world size 1 (NCCL), flax sharded at world size 1.
# OUTDIR gets at most 8 files, each written as soon as its part ends, so a kill keeps what finished:
#   summary.txt preflight.json junit.xml gpu_parity.json benchmark-highest.json benchmark-tf32.json
#   report.json logs.tar.gz (every part's log, the compare report's PNGs and markdown; never checkpoints).
# On the device a skipped GPU test, a failed compare check or a missing figure fails, in summary.txt and
# in the exit code (0 all passed, 1 a part failed, 2 no GPU / no data / bad usage).
set -uo pipefail

REHEARSE=0
if [ "${1:-}" = "--rehearse" ]; then
  REHEARSE=1
  shift
fi
if [ $# -ne 1 ]; then
  echo "usage: bash scripts/device_check.sh [--rehearse] OUTDIR" >&2
  exit 2
fi
mkdir -p -- "$1" || exit 2
OUT=$(cd -- "$1" && pwd) # absolute before any cd: a relative OUTDIR names the caller's folder
ROOT=$(cd -- "$(dirname -- "$0")/.." && pwd)
cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1                  # a killed part's log keeps what it printed
export XLA_PYTHON_CLIENT_PREALLOCATE=false # every JAX process: pytest's, the sharded one, compare, benchmark
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
mkdir -p "$WORK/logs"
trap 'rm -rf "$WORK"' EXIT
SUMMARY="$OUT/summary.txt"
rm -f "$OUT"/{summary.txt,preflight.json,junit.xml,gpu_parity.json,benchmark-highest.json,benchmark-tf32.json}
rm -f "$OUT"/{report.json,logs.tar.gz}
: >"$SUMMARY"
FAILED=0
START=$(date +%s)
say() { echo "$*" | tee -a "$SUMMARY"; }

# ---- limits (seconds). The device's sum, with the 5 s kill grace each, stays <= 480 (8 minutes on an H200);
# the rehearsal's are for the busy 2-core CPU box, at small sizes.
GRACE=5
if [ $REHEARSE -eq 1 ]; then
  L_PREFLIGHT=60 L_PYTEST=330 L_BENCH_HIGHEST=180 L_BENCH_TF32=180 L_COMPARE=200 L_DDP=90 L_SHARDED=90
  DEVICE=cpu
  BENCH_SIZE=(--limit-train "${FASHION_TWINS_REHEARSAL_TRAIN:-2048}" --limit-test 1000 --repeats 1 --tutorial-repeats 1)
  COMPARE_SIZE=(--dry-run)
  export FASHION_TWINS_GPU_REHEARSAL=1 CUDA_VISIBLE_DEVICES="" JAX_PLATFORMS=cpu
else
  L_PREFLIGHT=30 L_PYTEST=125 L_BENCH_HIGHEST=90 L_BENCH_TF32=65 L_COMPARE=60 L_DDP=30 L_SHARDED=25
  DEVICE=gpu
  BENCH_SIZE=(--repeats 1 --tutorial-repeats 1)
  COMPARE_SIZE=(--quick-epochs 1 --lockstep-steps 300)
fi
# A test (or a user) may shorten one part to see what a part that outlives its slot leaves: LIMIT_<PART>=S.
L_PREFLIGHT=${LIMIT_PREFLIGHT:-$L_PREFLIGHT} L_PYTEST=${LIMIT_PYTEST:-$L_PYTEST}
L_BENCH_HIGHEST=${LIMIT_BENCH_HIGHEST:-$L_BENCH_HIGHEST} L_COMPARE=${LIMIT_COMPARE:-$L_COMPARE}
TOTAL=$((L_PREFLIGHT + L_PYTEST + L_BENCH_HIGHEST + L_BENCH_TF32 + L_COMPARE + L_DDP + L_SHARDED + 7 * GRACE))
say "device check $([ $REHEARSE -eq 1 ] && echo "REHEARSAL on the CPU" || echo "on the GPU"), $(date -u +%FT%TZ)," \
  "parts' limits ${TOTAL}s in all; git $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

# ---- the data: one line and exit 2 if the four files are missing (every part would fail on it alone)
DATA=${FASHION_TWINS_DATA:-$ROOT/data}
for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  if [ ! -f "$DATA/$name.gz" ]; then
    say "error: Fashion-MNIST not found: $DATA/$name.gz is missing (set FASHION_TWINS_DATA or copy the four .gz" \
      "files into ./data; README, On a GPU)"
    exit 2
  fi
done
export FASHION_TWINS_DATA=$DATA

pack() { # logs.tar.gz, refreshed after every part: the logs and the compare report's PNGs and markdown
  tar -czf "$WORK/logs.tar.gz.tmp" -C "$WORK" logs 2>/dev/null && mv -f "$WORK/logs.tar.gz.tmp" "$OUT/logs.tar.gz"
}

part() { # part NAME SECONDS COMMAND...: under its own timeout, log in logs/NAME.log, one summary line
  local name=$1 limit=$2
  shift 2
  local t0 rc
  t0=$(date +%s)
  timeout -s INT -k "$GRACE" "$limit" "$@" >"$WORK/logs/$name.log" 2>&1
  rc=$?
  local took=$(($(date +%s) - t0)) verdict=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    verdict="FAIL timed out (limit ${limit}s)"
  elif [ $rc -ne 0 ]; then
    verdict="FAIL exit $rc"
  fi
  say "part $name: $verdict after ${took}s (limit ${limit}s)"
  if [ $rc -ne 0 ]; then
    FAILED=1
    tail -n 3 "$WORK/logs/$name.log" | sed 's/^/   | /' | tee -a "$SUMMARY"
  fi
  pack
  return $rc
}

verdict() { # verdict KIND: scripts/device_verdict.py's lines into the summary; its failure fails the check
  local rc
  $PY scripts/device_verdict.py "$1" "$OUT" $([ $REHEARSE -eq 1 ] && echo --rehearse) 2>&1 | tee -a "$SUMMARY"
  rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || FAILED=1
  return "$rc"
}

# ---- 1 preflight: stops at once (one line, exit 2) when torch sees no CUDA or JAX no GPU
timeout -s INT -k "$GRACE" "$L_PREFLIGHT" $PY scripts/device_verdict.py preflight "$OUT" \
  $([ $REHEARSE -eq 1 ] && echo --rehearse) >"$WORK/logs/preflight.log" 2>&1
rc=$?
grep -v '^error: ' "$WORK/logs/preflight.log" | tail -n 3 | tee -a "$SUMMARY"
if [ $rc -ne 0 ]; then
  line=$(grep '^error: ' "$WORK/logs/preflight.log" | tail -n 1)
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    line="error: preflight timed out (limit ${L_PREFLIGHT}s): the frameworks did not start in time"
  fi
  say "${line:-error: preflight failed (exit $rc): $(tail -n 1 "$WORK/logs/preflight.log")}"
  pack
  exit 2
fi
say "part preflight: ok"

# ---- 2 the GPU tests (junit.xml; their figures in gpu_parity.json, rewritten after each record)
FASHION_TWINS_GPU_REPORT="$OUT/gpu_parity.json" part pytest_gpu "$L_PYTEST" \
  $PY -m pytest -q -m gpu -p no:cacheprovider -rs --junitxml="$OUT/junit.xml" \
  tests/test_gpu_parity.py tests/test_gpu_training.py tests/test_distributed.py
verdict pytest

# ---- 3, 4 the benchmark, one part and one file per precision (time to 89 % with the highest one)
if [ $REHEARSE -eq 1 ]; then
  TF32=highest # the CPU has no TF32: the rehearsal proves the part's plumbing at highest
  say "   (rehearsal: the tf32 part runs at highest; the CPU has no TF32 matmuls)"
else
  TF32=tf32
fi
part benchmark_highest "$L_BENCH_HIGHEST" $PY -m fashion_twins benchmark --device "$DEVICE" --precision highest \
  "${BENCH_SIZE[@]}" --time-to-accuracy --recipe fast --out "$OUT/benchmark-highest.json"
part benchmark_tf32 "$L_BENCH_TF32" $PY -m fashion_twins benchmark --device "$DEVICE" --precision "$TF32" \
  "${BENCH_SIZE[@]}" --out "$OUT/benchmark-tf32.json"

# ---- 5 the cross-framework report (report.json; its PNGs and markdown into the tarball)
part compare "$L_COMPARE" $PY -m fashion_twins compare --device "$DEVICE" "${COMPARE_SIZE[@]}" --out-dir "$WORK/report"
if [ -f "$WORK/report/report.json" ]; then
  cp "$WORK/report/report.json" "$OUT/report.json"
  mkdir -p "$WORK/logs/report"
  cp "$WORK/report/"*.png "$WORK/report/"*.md "$WORK/logs/report/" 2>/dev/null
  pack
fi
verdict compare

# ---- 6, 7 the data-parallel paths at world size 1 (NCCL for torch on the GPU, gloo in the rehearsal)
part torch_ddp_ws1 "$L_DDP" $PY -m torch.distributed.run --standalone --nproc-per-node 1 -m fashion_twins train \
  --backend torch --dry-run --device "$DEVICE" --quiet --out "$WORK/ddp_torch.safetensors" \
  --metrics "$WORK/logs/ddp_torch.metrics.json"
part flax_sharded_ws1 "$L_SHARDED" $PY -m fashion_twins train --backend flax --devices 1 --dry-run --device "$DEVICE" \
  --quiet --out "$WORK/sharded_flax.safetensors" --metrics "$WORK/logs/sharded_flax.metrics.json"

# ---- the figures a GPU user wants, each from a returned file; a missing one fails
say "figures:"
verdict figures
pack
say "total $(($(date +%s) - START))s; $([ $FAILED -eq 0 ] && echo "PASSED" || echo "FAILED")"
exit $FAILED
