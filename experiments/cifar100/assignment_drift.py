"""Which init and rates keep the learned groups with the weights? (weights frozen, assignments only)

The split drops the weights between groups, so groups that "stay with the weights" are groups under
which little weight energy is off-block. This script starts from a dense warm-up checkpoint of
``splitkern train`` (``warmup/train.ckpt``), initialises the assignments from a k-means of the
classes' FC rows (plain, as the trainer's default, or balanced: equal-sized class groups), freezes
the network and runs one epoch's worth of assignment-only SGD (as ``assignment_forces.py``) per
setting. Per setting it reports the class groups' sizes, NMI vs the superclasses, classes and
features that left their initial group, and the mean off-block energy fraction
``||(1 - B) W||^2 / ||W||^2`` over the split layers at the init and after the steps.

    python experiments/cifar100/assignment_drift.py --ckpt /work/runs/fair_anneal3_s0/warmup/train.ckpt \\
        --data ../shared/data/cifar100
"""

from __future__ import annotations

import argparse
import copy

import torch
from assignment_forces import simulate

from splitkern import data as sk_data
from splitkern import models
from splitkern.splitnet import blocks, grouping
from splitkern.splitnet.train import load_dense_weights

# (init, confidence, gammas, assign lr): the trainer's default first, then one change at a time
SETTINGS = [("kmeans", 1.0, (1, 1, 10), 1.0), ("balanced", 1.0, (1, 1, 10), 1.0),
            ("kmeans", 4.0, (1, 1, 10), 1.0), ("balanced", 4.0, (1, 1, 10), 1.0),
            ("balanced", 1.0, (1, 1, 10), 0.3), ("balanced", 1.0, (1, 1, 3), 1.0),
            ("balanced", 1.0, (1, 1, 30), 1.0), ("kmeans", 1.0, (1, 1, 3), 1.0)]


def initialised(model, init: str, confidence: float):
    """A copy of the split-aware ``model`` with every assignment at the (plain or balanced) cluster init."""
    model = copy.deepcopy(model)
    grouping.apply_groups(model, grouping.cluster_groups(model, balanced=init == "balanced"), confidence)
    return model


def row(init, confidence, gammas, lr, start, dataset, steps: int) -> str:
    """One markdown row: the setting, then what ``steps`` assignment-only steps did to the groups."""
    before = blocks.hard_ids(start)
    key = start.split_plan.output_key
    result = simulate(start, gammas, lr, steps)
    after = blocks.hard_ids(result["model"])
    classes, features = blocks.moved(before, after, key)
    nmi0 = grouping.nmi(before[key].numpy(), dataset.fine_to_coarse)
    nmi1 = grouping.nmi(after[key].numpy(), dataset.fine_to_coarse)
    off0 = blocks.mean_fraction(blocks.off_block_fractions(start))
    off1 = blocks.mean_fraction(blocks.off_block_fractions(result["model"]))
    sizes0 = torch.bincount(before[key], minlength=2).tolist()
    return (f"| {init} | {confidence:g} | {gammas} | {lr:g} | {sizes0} -> {result['sizes']} | {nmi0:.3f} -> {nmi1:.3f} "
            f"| {classes} | {features} | {off0:.3f} -> {off1:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, help="warmup/train.ckpt of a `splitkern train` run")
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default="wrn16-2")
    parser.add_argument("--split", default="2-2-2")
    parser.add_argument("--steps", type=int, default=391, help="one epoch of CIFAR at batch 128")
    args = parser.parse_args()
    dataset = sk_data.load(args.data)
    state = torch.load(args.ckpt, map_location="cpu", weights_only=False)["model"]
    model = load_dense_weights(models.build(args.model, dataset.num_classes, args.split), state, args.ckpt)
    print("| init | confidence | gammas (R_D, R_W, R_E) | assign lr | class groups | NMI | classes moved "
          "| features moved | off-block fraction |")
    print("|---|---|---|---|---|---|---|---|---|")
    for init, confidence, gammas, lr in SETTINGS:
        print(row(init, confidence, gammas, lr, initialised(model, init, confidence), dataset, args.steps), flush=True)


if __name__ == "__main__":
    main()
