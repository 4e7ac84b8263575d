"""A placement/cost model: FLOPs and bytes per subtree, predicted speedup on N workers, communication."""

from __future__ import annotations

import torch

from splitkern.parallel.distributed import balanced_placement
from splitkern.parallel.subtrees import SubtreeSet, _flops


class _Trunk(torch.nn.Module):
    def __init__(self, subtree_set: SubtreeSet):
        super().__init__()
        self.set = subtree_set

    def forward(self, x):
        return self.set.trunk(x)


def cost_model(split_model, example: torch.Tensor, workers=(1, 2, 4, 8)) -> dict:
    """Per-sample FLOPs of the trunk and each subtree, and for each worker count the balanced
    placement, the predicted speedup over one worker, and the all-reduce bytes per sample.

    The prediction assumes time proportional to FLOPs and every worker running the trunk
    (duplicated, as in :class:`~splitkern.parallel.DistributedSplit`).
    """
    subtree_set = SubtreeSet(split_model, example)
    trunk = _flops(_Trunk(subtree_set), example)
    own = [max(cost - trunk, 0) for cost in subtree_set.costs]
    total = trunk + sum(own)
    plans = []
    for n in workers:
        placement = balanced_placement(own, n)
        load = [trunk + sum(c for c, w in zip(own, placement) if w == k) for k in range(n)]
        busiest = max(load)
        plans.append({"workers": n, "placement": placement, "predicted_speedup": total / busiest,
                      # ring all-reduce of the fp32 logits: 2 (n-1)/n of B x C x 4 bytes per rank
                      "allreduce_bytes_per_sample": 2 * (n - 1) / n * subtree_set.num_classes * 4})
    return {"trunk_flops": trunk, "subtree_flops": own,
            "subtree_classes": [len(c) for c in subtree_set.classes], "total_flops": total, "plans": plans}


def format_cost_model(report: dict) -> str:
    lines = [f"per sample: trunk {report['trunk_flops'] / 1e6:.1f} MFLOP, subtrees "
             + ", ".join(f"{f / 1e6:.1f}" for f in report["subtree_flops"]) + " MFLOP "
             + f"(classes {report['subtree_classes']}), total {report['total_flops'] / 1e6:.1f} MFLOP"]
    for plan in report["plans"]:
        lines.append(f"  {plan['workers']} workers: predicted speedup {plan['predicted_speedup']:.2f}x, "
                     f"placement {plan['placement']}, all-reduce {plan['allreduce_bytes_per_sample']:.0f} B/sample")
    return "\n".join(lines)
