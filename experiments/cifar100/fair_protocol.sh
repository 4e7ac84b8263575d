#!/usr/bin/env bash
# The fair-protocol CIFAR-100 evidence (experiments/cifar100/README.md), resumable.
#   experiments/cifar100/fair_protocol.sh arms SEED      # WRN-16-2 2-2-2, all five arms, 15 epochs
#   experiments/cifar100/fair_protocol.sh route          # the trained-model route, from seed 0's dense.pt
#   experiments/cifar100/fair_protocol.sh anneal SEED    # SplitNet + random with the anneal (ANNEAL epochs, default 3;
#                                                        # INIT=balanced for the balanced k-means init)
#   experiments/cifar100/fair_protocol.sh anneal-seeds   # anneal 0 then anneal 1 (for nohup ... &)
#   experiments/cifar100/fair_protocol.sh cut SEED W S A # where to cut: warm-up W, stage 1 S (cut at epoch S),
#                                                        # anneal A, 15 epochs in all, balanced init; SplitNet
#                                                        # only unless BASELINES=random; SHAPE=quadratic for
#                                                        # the quadratic anneal (default linear); SPLIT=2-4-8
#                                                        # for the deeper tree, GAMMAS=R_D,R_W,R_E (default
#                                                        # 1,1,10)
# Runs write to $RUNS (default runs/, git-ignored); re-running a killed command resumes it.
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/../.."
DATA=${DATA:-data/cifar-100-python}  # torchvision's CIFAR-100 folder, or the npz shards (see the README)
RUNS=${RUNS:-runs}
SK=${SK:-.venv/bin/splitkern}
COMMON=(--data "$DATA" --model wrn16-2 --split 2-2-2 --precision bf16 --no-tensorboard)
resume_flag() { [[ -f "$1/log.csv" ]] && echo --resume || true; }

ANNEAL=${ANNEAL:-3}

case "${1:?arms SEED | route | anneal SEED | anneal-seeds | cut SEED W S A}" in
  arms)
    out="$RUNS/fair_s$2"
    "$SK" train "${COMMON[@]}" --stage1-epochs 10 --warmup-epochs 5 --stage2-epochs 5 --anneal-epochs 0 \
        --assign-init cluster --baselines dense,random,cluster,thin --seed "$2" --out "$out" $(resume_flag "$out")
    ;;
  route)
    # A dense WRN-16-2 trained for 15 epochs (seed 0's dense arm), split with 2 + 2 more epochs at a
    # fine-tuning rate, against the same dense model continued for the same 4 epochs on the same curve.
    out="$RUNS/fair_route_s0"
    "$SK" train "${COMMON[@]}" --init-from "$RUNS/fair_s0/dense/dense.pt" --lr 0.02 \
        --stage1-epochs 2 --warmup-epochs 0 --stage2-epochs 2 --anneal-epochs 0 --assign-init cluster --baselines dense,random --seed 0 \
        --out "$out" $(resume_flag "$out")
    ;;
  anneal)
    # The arms schedule with the last $ANNEAL stage-1 epochs annealed (the off-block weights fade out,
    # groups frozen), for SplitNet and random groups (which branch off the dense arm where the anneal
    # starts). dense and thin do not depend on the anneal: their numbers are arms SEED's.
    # INIT: the assignment init; the committed fair_anneal3_s* runs used the plain k-means ("cluster").
    init=${INIT:-cluster}
    out="$RUNS/fair_anneal${ANNEAL}$([[ $init == cluster ]] || echo "_$init")_s$2"
    "$SK" train "${COMMON[@]}" --stage1-epochs 10 --warmup-epochs 5 --stage2-epochs 5 --anneal-epochs "$ANNEAL" \
        --assign-init "$init" --baselines random --seed "$2" --out "$out" $(resume_flag "$out")
    ;;
  cut)
    # The cut-point sweep (issue: where to cut): the same 15-epoch cosine, the split at epoch $4, so the
    # split model gets 15 - $4 epochs of stage 2 at the learning rate left on the curve.
    shape=${SHAPE:-linear} split=${SPLIT:-2-2-2} gammas=${GAMMAS:-1,1,10}
    out="$RUNS/fair_cut_w$3_s$4_a$5$([[ $shape == linear ]] || echo "_$shape")$([[ $split == 2-2-2 ]] || echo "_$split")"
    out="$out$([[ $gammas == 1,1,10 ]] || echo "_g${gammas//,/-}")_s$2"
    "$SK" train "${COMMON[@]}" --split "$split" --warmup-epochs "$3" --stage1-epochs "$4" --stage2-epochs $((15 - $4)) \
        --anneal-epochs "$5" --anneal-shape "$shape" --gammas "$gammas" --assign-init balanced --baselines "${BASELINES:-}" --seed "$2" --out "$out" \
        $(resume_flag "$out")
    ;;
  anneal-seeds)
    "$SELF" anneal 0
    "$SELF" anneal 1
    ;;
esac
