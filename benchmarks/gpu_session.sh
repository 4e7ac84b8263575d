#!/usr/bin/env bash
# One command for a lent GPU machine (DESIGN.md §8): build, GPU tests, compute-sanitizer,
# benchmarks, a short real-data SplitNet run. Results land in $OUT (default: ./gpu-results).
#   device run:  bash benchmarks/gpu_session.sh            (carry a CIFAR shard folder as data/cifar100)
set -uo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export SPLITKERN_SKIP_CUDA_BUILD=${SPLITKERN_SKIP_CUDA_BUILD:-0}
{
  nvidia-smi
  python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())"
  pip install --no-build-isolation --no-deps -e . 2>&1 | tail -2
  python3 -m splitkern.info
} > "$OUT/env.txt" 2>&1

# 1. correctness on the GPU (gpu-marked tests included), with a memcheck of the op tests when available
# (no -x: one session should report every GPU failure, not the first)
python3 -m pytest -q tests -p no:cacheprovider -rfEs > "$OUT/tests.txt" 2>&1
if command -v compute-sanitizer >/dev/null; then
  compute-sanitizer --tool memcheck python3 -m pytest -q tests/ops -x -k "not fuzz and not compile" \
    > "$OUT/memcheck.txt" 2>&1
fi

# 2. benchmarks: CSV + plot per op into benchmarks/results, copied to $OUT
for op in block_diag_mm grouped_conv group_weight_reg split_inference; do
  python3 benchmarks/bench_${op}.py > "$OUT/bench_${op}.txt" 2>&1
done
cp benchmarks/results/*gpu* "$OUT/" 2>/dev/null

# 3. SplitNet on one real CIFAR-100 shard, if carried (data/cifar100 with train_0.npz + test.npz)
if [ -f data/cifar100/test.npz ]; then
  python3 -m splitkern.cli train --data data/cifar100 --model wrn16-8 --split 2-2-2 --device cuda \
    --stage1-epochs 10 --warmup-epochs 3 --stage2-epochs 5 --baselines cluster --no-tensorboard \
    --out "$OUT/splitnet" > "$OUT/splitnet.txt" 2>&1
  rm -f "$OUT"/splitnet/*/*.ckpt
fi
echo "done: $(ls "$OUT")"
