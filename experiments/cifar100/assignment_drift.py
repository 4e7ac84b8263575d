"""Which init and rates keep the learned groups with the weights? (weights frozen, assignments only)

The split drops the weights between groups, so groups that "stay with the weights" are groups under
which little weight energy is off-block. This script starts from a dense warm-up checkpoint of
``splitkern train`` (``warmup/train.ckpt``), initialises the assignments from a k-means of the
classes' FC rows (plain, as the trainer's default, or balanced: equal-sized class groups), freezes
the network and runs one epoch's worth of assignment-only SGD (as ``assignment_forces.py``) per
setting. Per setting it reports the class groups' sizes, NMI vs the superclasses, classes and
features that left their initial group, and the mean off-block energy fraction
``||(1 - B) W||^2 / ||W||^2`` over the split layers at the init and after the steps.

    python experiments/cifar100/assignment_drift.py --ckpt runs/fair_anneal3_s0/warmup/train.ckpt \\
        --data data/cifar-100-python
"""

from __future__ import annotations

import copy

import torch
from assignment_forces import load_warmup, simulate, warmup_parser

from splitkern.splitnet import blocks, grouping

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
    args = warmup_parser(__doc__.split("\n")[0]).parse_args()
    dataset, model = load_warmup(args)
    print("| init | confidence | gammas (R_D, R_W, R_E) | assign lr | class groups | NMI | classes moved "
          "| features moved | off-block fraction |")
    print("|---|---|---|---|---|---|---|---|---|")
    for init, confidence, gammas, lr in SETTINGS:
        print(row(init, confidence, gammas, lr, initialised(model, init, confidence), dataset, args.steps), flush=True)


if __name__ == "__main__":
    main()
