#!/usr/bin/env bash
# A short second device `run` after benchmarks/gpu_session.sh: rebuild, re-run the tests that failed
# there, diagnose the process crashes, and profile where the headline lines spend their time
# (benchmarks/gpu_profile.py). Everything lands in one tarball + followup.txt in $OUT.
#   GPU_FOLLOWUP_TESTS="tests/a.py::t ..." bash benchmarks/gpu_followup.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
mkdir -p "$OUT" "$WORK/results"
export PYTHONUNBUFFERED=1 MAX_JOBS=$(nproc) SPLITKERN_RESULTS_DIR="$WORK/results"
[ -d /usr/local/cuda ] && export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
START=$(date +%s)
note() { echo "[followup $(( $(date +%s) - START ))s] $*" | tee -a "$WORK/followup.txt"; }

note "build"
timeout 200 "$PY" -m pip install --no-build-isolation --no-deps -e . > "$WORK/build.log" 2>&1
note "build rc=$?"

# Each bad-argument call in its own process, so one crash does not hide the next.
PRE="import faulthandler, torch; faulthandler.enable(); from splitkern import backend; backend.extension()"
CALLS=(
  "torch.ops.splitkern.ext_block_diag_mm(torch.randn(2, 3), torch.randn(6), None, [3], [2, 1], None, None)"
  "torch.ops.splitkern.ext_block_diag_mm(torch.randn(2, 3), torch.randn(5), None, [3], [2], None, None)"
  "torch.ops.splitkern.ext_group_weight_reg_gemms(torch.randn(8, 6), torch.rand(2, 6), torch.rand(2, 7))"
  "torch.ops.splitkern_emulated.block_diag_mm(torch.randn(2, 3).half(), torch.randn(6).half(), torch.randn(3).half(), [3], [2], None, None)"
  "torch.ops.aten.mm(torch.randn(2, 3), torch.randn(4, 5))"
)
for init in "" "torch.cuda.init(); torch.zeros(1, device='cuda'); "; do
  for call in "${CALLS[@]}"; do
    timeout 60 "$PY" -c "$PRE; $init
try:
    $call
    print('returned')
except RuntimeError as e:
    print('raised', str(e).splitlines()[0][:150])" > "$WORK/call.log" 2>&1
    note "rc=$? init=${init:+cuda} ${call:0:60}... -> $(head -c 300 "$WORK/call.log" | tr '\n' ' ')"
  done
done
if command -v cuda-gdb >/dev/null; then
  timeout 90 cuda-gdb -batch -ex run -ex bt --args "$PY" -c "$PRE; ${CALLS[0]}" > "$WORK/gdb.log" 2>&1
  note "cuda-gdb rc=$?; backtrace in gdb.log"
fi

TESTS=${GPU_FOLLOWUP_TESTS:-"tests/ops/test_block_diag_mm.py::test_torch_compile_fullgraph tests/ops/test_grouped_conv.py::test_torch_compile_fullgraph tests/parallel/test_local.py::test_readme_parallel_snippet_runs"}
# shellcheck disable=SC2086
timeout 150 "$PY" -m pytest -q -p no:cacheprovider -rfEs $TESTS > "$WORK/tests.log" 2>&1
note "tests rc=$?: $(tail -1 "$WORK/tests.log")"

timeout 100 "$PY" benchmarks/gpu_profile.py --op block_diag_mm --case equal-M4096 --case ragged-M4096 \
  --case equal-M32 --line dense --line loop --line splitkern-triton --line splitkern-extension --line grouped_mm_padded \
  > "$WORK/profile_mm.log" 2>&1
note "profile block_diag_mm rc=$?"
timeout 60 "$PY" benchmarks/gpu_profile.py --op grouped_conv --case wrn-256@16-N128-G4 --line dense --line groups \
  --line splitkern-triton > "$WORK/profile_conv.log" 2>&1
note "profile grouped_conv rc=$?"

cp "$WORK/followup.txt" "$OUT/followup.txt"
tar -czf "$OUT/gpu-followup-$(date +%Y-%m-%d-%H%M).tar.gz" -C "$WORK" .
note "done"
