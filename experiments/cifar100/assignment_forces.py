"""Which SplitNet regulariser moves the class assignment away from the cluster init?

The classification loss never touches the assignments (stage 1's forward is dense), so in
stage 1 they move only by gamma1 R_D + gamma2 R_W + gamma3 R_E. This script starts from
a warm-up checkpoint of ``splitkern train``, applies the cluster init exactly as the trainer
does, freezes the network weights, and runs one epoch's worth of assignment-only SGD
(Nesterov momentum 0.9, as the trainer) for several regulariser weightings. It reports,
per setting, the NMI of the class groups vs the 20 superclasses, the class-group sizes,
how many classes left their initial group, and the gradient norm of each term at the start.
Frozen weights make it a first-order picture (in the real run the weights move too, at
lr 0.1), but it runs in seconds instead of an epoch of training.

    python experiments/cifar100/assignment_forces.py \
        --ckpt runs/fair_s0/warmup/train.ckpt --data data/cifar-100-python

(``warmup/train.ckpt`` holds the dense warm-up model; checkpoints of the old protocol,
``splitnet/warmup.ckpt``, hold a split-aware one; both load.)
"""

from __future__ import annotations

import argparse
import copy

import torch

from splitkern import data as sk_data
from splitkern import models
from splitkern.splitnet import convert, grouping
from splitkern.splitnet.train import load_dense_weights


def simulate(model, gammas, lr: float, steps: int) -> dict:
    model = copy.deepcopy(model)
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.assignments.parameters())
    for p in params:
        p.requires_grad_(True)
    key = model.split_plan.output_key
    start = model.assignments[key].hard().clone()
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)
    for _ in range(steps):
        loss = convert.regularization(model, gammas)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final = model.assignments[key].hard()
    return {"final": final, "moved": int((final != start).sum()), "sizes": torch.bincount(final, minlength=2).tolist(),
            "terms": {k: float(v.detach()) for k, v in convert.regularization_terms(model).items()}, "model": model}


def start_gradients(model) -> dict[str, float]:
    """|d term / d class-assignment logits| of each (unweighted) term at the init."""
    logits = model.assignments[model.split_plan.output_key].logits
    def norm(value):
        return float(torch.autograd.grad(value, logits, retain_graph=True, materialize_grads=True)[0].norm())
    return {name: norm(value) for name, value in convert.regularization_terms(model).items()}


def warmup_parser(description: str) -> argparse.ArgumentParser:
    """The options both diagnostics take: the warm-up checkpoint, the data, model, split and steps."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--ckpt", required=True, help="warmup/train.ckpt of a `splitkern train` run")
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default="wrn16-2")
    parser.add_argument("--split", default="2-2-2")
    parser.add_argument("--steps", type=int, default=391, help="one epoch of CIFAR at batch 128")
    return parser


def load_warmup(args):
    """``(dataset, split-aware model)``: the checkpoint's dense weights, the assignments at their init."""
    dataset = sk_data.load(args.data)
    state = torch.load(args.ckpt, map_location="cpu", weights_only=False)["model"]  # dense: no assignments
    return dataset, load_dense_weights(models.build(args.model, dataset.num_classes, args.split), state, args.ckpt)


def main() -> None:
    parser = warmup_parser(__doc__.split("\n")[0])
    parser.add_argument("--confidence", type=float, default=1.0)
    args = parser.parse_args()
    dataset, model = load_warmup(args)
    grouping.apply_groups(model, grouping.cluster_groups(model), args.confidence)  # as the trainer does
    key = model.split_plan.output_key
    init = model.assignments[key].hard().clone()
    print(f"cluster init: class groups {torch.bincount(init).tolist()}, "
          f"NMI {grouping.nmi(init.numpy(), dataset.fine_to_coarse):.3f}")
    print("gradient norm on the class logits at the init (unweighted):",
          {k: f"{v:.3g}" for k, v in start_gradients(model).items()})
    print("| gammas (R_D, R_W, R_E) | assign lr | NMI | class groups | classes moved | R_D | R_W | R_E |")
    print("|---|---|---|---|---|---|---|---|")
    # R_W is the official value-weighted mean over split layers (convert.weighted_layer_mean)
    settings = [((1, 1, 10), 0.1), ((1, 1, 10), 1), ((1, 1, 10), 10),  # the paper's gammas at three rates
                ((0, 1, 0), 1), ((1, 0, 10), 1),  # R_W alone, no R_W
                ((1, 3, 10), 1), ((1, 0.3, 10), 1), ((1, 1, 3), 1), ((1, 1, 30), 1)]  # R_W vs R_E balance
    for gammas, lr in settings:
        r = simulate(model, gammas, lr, args.steps)
        nmi = grouping.nmi(r["final"].numpy(), dataset.fine_to_coarse)
        t = r["terms"]
        print(f"| {gammas} | {lr} | {nmi:.3f} | {r['sizes']} | {r['moved']} | {t['R_D']:.3f} | {t['R_W']:.4g} | "
              f"{t['R_E']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
