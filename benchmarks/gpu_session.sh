#!/usr/bin/env bash
# The one command a maintainer with a CUDA machine runs: build, measure, test, in at most
# GPU_SESSION_BUDGET seconds (default 540), everything in ONE tarball plus summary.txt in $OUT.
# Measurements first, tests after, the config sweep only with the time that is left:
#   env    what the machine has; TORCH_CUDA_ARCH_LIST as found and as built (the GPU's own arch,
#          9.0a on an H100/H200; GPU_SESSION_ARCHS overrides)
#   build  pip install -e . (the image's C++ compiler, $CXX, is nvcc's host compiler too), then a
#          check that the built _C holds code for every arch asked for: a build without sm_90a
#          code or without the CUTLASS kernels on an sm_90 GPU fails this step
#   host_overhead     benchmarks/bench_host_overhead.py: a split layer's call against the dense
#                     layer's (tiny shapes), and SplitLinear / SplitConv2d at full size with the
#                     profiler's kernel time beside the event time
#   split_inference   benchmarks/bench_split_inference.py
#   ops_*             the op benchmarks through benchmarks/gpu_profile.py: every line's event time,
#                     kernel time and host time, and the usual speedup CSV
#   block_diag_mm_no_tma  the aligned 16-bit GEMMs again with the Triton TMA kernel off
#                     (SPLITKERN_TRITON_TMA=0): the pointer kernels on the same machine
#   tests             only the GPU-marked tests (pytest -m gpu)
#   memcheck          compute-sanitizer over the GPU-marked op tests
#   sweep             the kernel config sweep (python -m splitkern.tune) with what the budget has left
# Each step has its own timeout; a failed step does not stop the next.
# Dry run on any machine (CI does this): GPU_SESSION_DRY_RUN=1 OUT=/tmp/x bash benchmarks/gpu_session.sh
# (tiny shapes, no rebuild, whatever backends run there). Afterwards:
#   python benchmarks/unpack_gpu_results.py <the tarball>
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
DRY=${GPU_SESSION_DRY_RUN:-0}
BUDGET=${GPU_SESSION_BUDGET:-540}
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
# The image's C++ compiler compiles nvcc's host code too: torch passes -ccbin $CC to the extension's
# .cu files; NVCC_CCBIN covers the nvcc commands that name no host compiler (setup.py's CUTLASS objects).
if [ -n "${CXX:-}" ]; then
  HOST_CXX=$(command -v "$CXX" || echo "$CXX")
  export NVCC_CCBIN=${NVCC_CCBIN:-$HOST_CXX} CUDAHOSTCXX=${CUDAHOSTCXX:-$HOST_CXX}
fi
# Build for this GPU only (one arch: half the nvcc work of the default "8.0;9.0a"); sm_90 needs 9.0a
# (wgmma, TMA: the CUTLASS kernels), which a plain "9.0" would silently drop.
export IMAGE_ARCHS=${TORCH_CUDA_ARCH_LIST-unset}
if [ "$DRY" != 1 ]; then
  MACHINE_ARCH=$("$PY" -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}.{n}' + ('a' if (m, n) == (9, 0) else ''))" 2>/dev/null)
  export TORCH_CUDA_ARCH_LIST=${GPU_SESSION_ARCHS:-${MACHINE_ARCH:-8.0;9.0a}}
fi
CONV_CASES=(--case 512@8 --case 256@16 --case 128@32)  # WRN stages 3, 2, 1
NO_TMA_CASES=(--case equal-M4096)  # the aligned GEMMs TMA serves, bf16 and fp16
[ "$DRY" = 1 ] && CONV_CASES=() && NO_TMA_CASES=()

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME SECONDS CMD...: run CMD (a command or an exported function) under a timeout (its own limit or what the budget has left),
# output to logs/NAME.log, one line "NAME rc seconds" in steps.txt.
step() {
  local name=$1 limit=$(( $2 * SLACK )) t0 rc
  shift 2
  (( limit > $(left) )) && limit=$(left)
  if (( limit < 5 )); then
    echo "$name skipped 0 (budget spent)" >> "$WORK/steps.txt"
    echo "[gpu_session] $name skipped (budget spent)"
    return
  fi
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" > "$WORK/logs/$name.log" 2>&1
  rc=$?
  echo "$name $rc $(( $(date +%s) - t0 ))" >> "$WORK/steps.txt"
  echo "[gpu_session] $name rc=$rc ($(( $(date +%s) - t0 )) s, $(left) s left)"
}

environment() {
  date -u
  nvidia-smi 2>/dev/null || echo "no nvidia-smi"
  echo "CUDA_HOME=${CUDA_HOME:-unset} CC=${CC:-unset} CXX=${CXX:-unset} NVCC_CCBIN=${NVCC_CCBIN:-unset} nproc=$(nproc)" \
       "dry_run=$DRY budget=${BUDGET}s"
  echo "TORCH_CUDA_ARCH_LIST: ${IMAGE_ARCHS} as found, ${TORCH_CUDA_ARCH_LIST:-unset, the setup.py default} for this build"
  command -v nvcc >/dev/null && nvcc --version | tail -1
  echo "cuobjdump: $(command -v cuobjdump || ls "${CUDA_HOME:-/nonexistent}/bin/cuobjdump" 2>/dev/null || echo none)"
  if [ -f build/cutlass_include/cutlass/cutlass.h ]; then echo "CUTLASS headers: build/cutlass_include"
  else "$PY" -c "import cutlass_library; print('CUTLASS headers: the nvidia-cutlass wheel')" 2>/dev/null \
    || echo "CUTLASS headers: none (make prepare-gpu copies them to build/cutlass_include)"; fi
  "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton',
      triton.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device',
      torch.cuda.get_device_capability() if torch.cuda.is_available() else '')"
}

check_build() {  # the built _C against the arch list it was built for; exits 1 on a missing arch
  "$PY" - <<'PYEOF'
import glob, os, re, shutil, subprocess, sys

import torch

import splitkern
from splitkern import backend

dry = os.environ.get("DRY") == "1"
ext, why = backend.extension()
if ext is None:
    print(f"build check: splitkern._C did not load ({why})")
    sys.exit(0 if dry else 1)
asked = [a.strip() for a in re.split(r"[;\s]+", os.environ.get("TORCH_CUDA_ARCH_LIST", "")) if a.strip()]
print(f"build check: _C built for archs {ext.cuda_archs!r}, {len(ext.kernels())} kernels, "
      f"CUTLASS kernels: {'block_diag_mm_cutlass:cuda' in ext.kernels()}")
elves = None
cuobjdump = shutil.which("cuobjdump") or os.path.join(os.environ.get("CUDA_HOME", "/nonexistent"), "bin", "cuobjdump")
so = glob.glob(os.path.join(os.path.dirname(splitkern.__file__), "_C*.so"))
if so and os.path.exists(cuobjdump):
    listing = subprocess.run([cuobjdump, "--list-elf", so[0]], capture_output=True, text=True).stdout
    elves = sorted(set(re.findall(r"sm_\d+[af]?", listing)))
    print(f"build check: cuobjdump --list-elf {os.path.basename(so[0])}: {' '.join(elves) or 'no device code'}")
errors = []
if dry:
    print("build check: dry run, the installed build is not checked against an arch list")
    asked = []
for arch in asked:
    sm = "sm_" + arch.replace(".", "").removesuffix("+PTX")
    if arch not in ext.cuda_archs.split(";"):
        errors.append(f"{arch} was asked for, _C says it was built for {ext.cuda_archs!r}")
    if elves is not None and sm not in elves:
        errors.append(f"{arch} was asked for, _C holds no {sm} code (cuobjdump: {elves})")
if "9.0a" in asked and "block_diag_mm_cutlass:cuda" not in ext.kernels():
    errors.append("9.0a was asked for, but the CUTLASS kernels were not built (no CUTLASS headers? see build.log)")
if torch.cuda.is_available() and asked and torch.cuda.get_device_capability() == (9, 0) and "9.0a" not in asked:
    errors.append(f"an sm_90 GPU, but the arch list {asked} has no 9.0a: no wgmma/TMA kernels")
for error in errors:
    print(f"build check: FAILED: {error}")
sys.exit(1 if errors else 0)
PYEOF
}

build() {
  local t0
  t0=$(date +%s)
  if [ "$DRY" = 1 ]; then echo "dry run: using the installed build"; else
    "$PY" -m pip install -v --no-build-isolation --no-deps -e . || return 1
    echo "build: pip install took $(( $(date +%s) - t0 )) s"
  fi
  "$PY" -m splitkern.info
  check_build
}

bench() {  # bench OP [ARGS...]: one benchmark script
  local op=$1
  shift
  "$PY" "benchmarks/bench_${op}.py" "$@"
}

profile() {  # profile OP [ARGS...]: the op benchmark's lines with their kernel times (benchmarks/gpu_profile.py)
  "$PY" benchmarks/gpu_profile.py --op "$@"
}

gpu_tests() {  # the GPU-marked tests only (fast path, CUTLASS, strategies, graphs); the rest run in CI
  local args=(-p no:cacheprovider -rfEs -m gpu --junitxml="$WORK/tests.xml")
  if [ "$DRY" = 1 ]; then  # no GPU: collected and skipped
    "$PY" -m pytest -q "${args[@]}" tests
    return
  fi
  # -v: each result is a line in the log, so a step stopped by its timeout still shows how far it got
  "$PY" -c "import xdist" 2>/dev/null && args+=(-n "$(( $(nproc) > 8 ? 8 : $(nproc) ))")
  "$PY" -c "import pytest_timeout" 2>/dev/null && args+=(--timeout 120)
  "$PY" -m pytest -v "${args[@]}" tests
}

memcheck() {
  if ! command -v compute-sanitizer >/dev/null; then echo "no compute-sanitizer on PATH"; return 0; fi
  compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" -m pytest -q -m gpu tests/ops -p no:cacheprovider \
    -k "not compile and not fuzz"
}

sweep() {  # sweep SECONDS: the config sweep's timing budget
  if ! "$PY" -c "import splitkern.tune" 2>/dev/null; then echo "splitkern.tune does not import: no sweep"; return 1; fi
  if [ "$DRY" = 1 ]; then
    TRITON_INTERPRET=1 "$PY" -m splitkern.tune --out "$WORK/results" --tiny
  else
    "$PY" -m splitkern.tune --out "$WORK/results" --budget "$1"
  fi
}

export PY DRY WORK
export -f environment check_build build bench profile gpu_tests memcheck sweep
step env 30 environment
step build 240 build
step host_overhead 120 bench host_overhead
step split_inference 90 bench split_inference
step ops_block_diag_mm 120 profile block_diag_mm
# the same aligned bf16 GEMMs on the pointer kernels (the TMA kernel off): what TMA buys, on one machine
step block_diag_mm_no_tma 45 env SPLITKERN_TRITON_TMA=0 "$PY" benchmarks/bench_block_diag_mm.py \
    "${NO_TMA_CASES[@]}" --line dense --line splitkern-triton --name block_diag_mm-no-tma
step ops_grouped_conv 90 profile grouped_conv "${CONV_CASES[@]}"
step ops_group_weight_reg 30 profile group_weight_reg
step tests 150 gpu_tests
step memcheck 60 memcheck
# the sweep gets what is left, less a margin for its set-up and for packing the results
if (( $(left) >= 90 )) || [ "$DRY" = 1 ]; then
  step sweep "$(left)" sweep "$(( $(left) - 45 ))"
else
  echo "sweep skipped 0 ($(left) s left)" >> "$WORK/steps.txt"
  echo "[gpu_session] sweep skipped ($(left) s left)"
fi

"$PY" benchmarks/gpu_summary.py "$WORK" > "$WORK/summary.txt" 2>> "$WORK/logs/summary.log"
cp "$WORK/summary.txt" "$OUT/summary.txt"
tar -czf "$OUT/gpu-run-$STAMP.tar.gz" -C "$WORK" .
echo "[gpu_session] done in $(( $(date +%s) - START )) s: $OUT/summary.txt, $OUT/gpu-run-$STAMP.tar.gz"
