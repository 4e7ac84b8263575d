#!/usr/bin/env bash
# One device `run` for a lent GPU (README "GPU session"): everything measured comes back in ONE
# tarball plus summary.txt in $OUT, within GPU_SESSION_BUDGET seconds (default 480 of the 600 a
# call may take). Steps, most valuable first; each has its own timeout, a failed step does not
# stop the next:
#   env + build  ->  every op/nn/parallel test on the GPU (xdist)  ->  headline benchmarks  ->
#   config sweep  ->  compute-sanitizer memcheck of the op tests (if time is left)
# Dry run on any machine (CI does this): GPU_SESSION_DRY_RUN=1 OUT=/tmp/x bash benchmarks/gpu_session.sh
# (tiny shapes, no rebuild, whatever backends run there). Afterwards, here:
#   python benchmarks/unpack_gpu_results.py <the tarball>
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
DRY=${GPU_SESSION_DRY_RUN:-0}
BUDGET=${GPU_SESSION_BUDGET:-480}
SLACK=1
if [ "$DRY" = 1 ]; then  # a loaded CI machine: the same steps, limits that do not bite
  BUDGET=${GPU_SESSION_BUDGET:-1800}
  SLACK=4
fi
PY=${PYTHON:-python3}
START=$(date +%s)
STAMP=$(date +%Y-%m-%d-%H%M)
WORK=$(mktemp -d)
mkdir -p "$OUT" "$WORK/logs" "$WORK/results"
export PYTHONUNBUFFERED=1 MAX_JOBS=$(nproc) SPLITKERN_RESULTS_DIR="$WORK/results"
[ "$DRY" = 1 ] && export SPLITKERN_BENCH_TINY=1
# CUDA_HOME from the nvcc on PATH (which may be a wrapper script: ask nvcc where its toolkit is)
if command -v nvcc >/dev/null; then
  for home in "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")" \
              "$(readlink -f "$(nvcc --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)")" "${CUDA_HOME:-}" /usr/local/cuda; do
    if [ -n "$home" ] && [ -f "$home/include/cuda_runtime.h" ]; then export CUDA_HOME=$home; break; fi
  done
fi
CONV_CASES=(--case 512@8 --case 256@16 --case 128@32)  # WRN stages 3, 2, 1
[ "$DRY" = 1 ] && CONV_CASES=()

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME SECONDS CMD...: run CMD (a command or an exported function) under a timeout (its own limit or what the budget has left),
# output to logs/NAME.log, one line "NAME rc seconds" in steps.txt.
step() {
  local name=$1 limit=$(( $2 * SLACK )) t0 rc
  shift 2
  (( limit > $(left) )) && limit=$(left)
  if (( limit < 5 )); then
    echo "$name skipped 0 (budget spent)" >> "$WORK/steps.txt"
    return
  fi
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" > "$WORK/logs/$name.log" 2>&1
  rc=$?
  echo "$name $rc $(( $(date +%s) - t0 ))" >> "$WORK/steps.txt"
  echo "[gpu_session] $name rc=$rc ($(( $(date +%s) - t0 )) s, $(left) s left)"
}

environment() {
  nvidia-smi 2>/dev/null || echo "no nvidia-smi"
  echo "CUDA_HOME=${CUDA_HOME:-unset} CC=${CC:-unset} CXX=${CXX:-unset} nproc=$(nproc) dry_run=$DRY"
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__,
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
}

build() {
  if [ "$DRY" = 1 ]; then echo "dry run: using the installed build"; else
    "$PY" -m pip install --no-build-isolation --no-deps -e . || return 1
  fi
  "$PY" -m splitkern.info
}

bench() {  # bench OP [ARGS...]: one benchmark script
  local op=$1
  shift
  "$PY" "benchmarks/bench_${op}.py" "$@"
}

sweep() {
  if "$PY" -c "import splitkern.tune" 2>/dev/null; then
    if [ "$DRY" = 1 ]; then
      TRITON_INTERPRET=1 "$PY" -m splitkern.tune --out "$WORK/results" --tiny
    else
      "$PY" -m splitkern.tune --out "$WORK/results" --budget 170
    fi
  else
    echo "splitkern.tune is not built yet: no sweep"
  fi
}

gpu_tests() {  # every op/nn/parallel test on the GPU (DEVICE is cuda there), not only the gpu-marked ones
  local args=(-p no:cacheprovider -rfEs --junitxml="$WORK/tests.xml")
  if [ "$DRY" = 1 ]; then  # CI's interpreter would take minutes over the whole folder: the gpu-marked ones
    "$PY" -m pytest -q "${args[@]}" -m gpu tests/ops tests/nn tests/parallel
    return
  fi
  # -v: each result is a line in the log, so a step stopped by its timeout still shows how far it got
  "$PY" -c "import xdist" 2>/dev/null && args+=(-n "$(( $(nproc) > 12 ? 12 : $(nproc) ))")
  "$PY" -c "import pytest_timeout" 2>/dev/null && args+=(--timeout 120)
  "$PY" -m pytest -v "${args[@]}" tests/ops tests/nn tests/parallel
}

memcheck() {
  if ! command -v compute-sanitizer >/dev/null; then echo "no compute-sanitizer on PATH"; return 0; fi
  compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" -m pytest -q -m gpu tests/ops -p no:cacheprovider \
    -k "not compile and not fuzz"
}

export PY DRY WORK
export -f environment build bench gpu_tests sweep memcheck
step env 30 environment
step build 240 build
step tests 200 gpu_tests
step bench_block_diag_mm 60 bench block_diag_mm
step bench_grouped_conv 60 bench grouped_conv "${CONV_CASES[@]}"
step bench_split_inference 90 bench split_inference
step bench_group_weight_reg 20 bench group_weight_reg
step sweep 180 sweep
step memcheck 600 memcheck

"$PY" benchmarks/gpu_summary.py "$WORK" > "$WORK/summary.txt" 2>> "$WORK/logs/summary.log"
cp "$WORK/summary.txt" "$OUT/summary.txt"
tar -czf "$OUT/gpu-session-$STAMP.tar.gz" -C "$WORK" .
echo "[gpu_session] done in $(( $(date +%s) - START )) s: $OUT/summary.txt, $OUT/gpu-session-$STAMP.tar.gz"
