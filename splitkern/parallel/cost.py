"""A placement/cost model: FLOPs and bytes per subtree, predicted speedup on N workers, communication."""

from __future__ import annotations

import torch

from splitkern.parallel.distributed import balanced_placement, logit_exchange
from splitkern.parallel.subtrees import SubtreeSet, count_flops


class _Trunk(torch.nn.Module):
    def __init__(self, subtree_set: SubtreeSet):
        super().__init__()
        self.set = subtree_set

    def forward(self, x):
        return self.set.trunk(x)


def _state_bytes(module: torch.nn.Module) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def cost_model(split_model, example: torch.Tensor, workers=(1, 2, 4, 8), batch: int = 256) -> dict:
    """What running the subtrees of ``split_model`` on 1..N workers costs and buys.

    Per sample: FLOPs of the trunk and of each subtree, and the bytes of the features at the
    cut (the trunk's output). Per copy: weight (+ buffer) bytes of the trunk and of each
    subtree. For each worker count: the balanced placement, the predicted speedup over one
    worker, and the communication per batch of ``batch`` samples, for
    :class:`~splitkern.parallel.DistributedSplit` (bytes each rank receives in the collective
    :func:`~splitkern.parallel.logit_exchange` picks) and
    :class:`~splitkern.parallel.DeviceParallel` (features to every other device that holds a
    subtree, its logits back).

    The prediction assumes time proportional to FLOPs and every worker running the trunk
    (duplicated, as in :class:`~splitkern.parallel.DistributedSplit`).
    """
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    subtree_set = SubtreeSet(split_model, example)
    trunk = count_flops(_Trunk(subtree_set), example)
    with torch.no_grad():
        features = subtree_set.trunk(example[:1])
    cut_bytes = features.numel() * features.element_size()
    logit_bytes = features.element_size()
    own = [max(cost - trunk, 0) for cost in subtree_set.costs]
    total = trunk + sum(own)
    classes = [len(c) for c in subtree_set.classes]
    plans = []
    for n in workers:
        placement = balanced_placement(own, n)
        load = [trunk + sum(c for c, w in zip(own, placement) if w == k) for k in range(n)]
        remote = [i for i, w in enumerate(placement) if w != 0]
        exchange, values_per_sample = logit_exchange(classes, placement, n)
        plans.append({
            "workers": n, "placement": placement, "predicted_speedup": total / max(load),
            "logit_exchange": exchange, "exchange_bytes_per_batch": values_per_sample * logit_bytes * batch,
            "device_copy_bytes_per_batch": (len({placement[i] for i in remote}) * cut_bytes
                                            + sum(classes[i] for i in remote) * logit_bytes) * batch,
        })
    return {"trunk_flops": trunk, "subtree_flops": own, "subtree_classes": classes, "total_flops": total,
            "cut_bytes_per_sample": cut_bytes, "trunk_bytes": _state_bytes(subtree_set.trunk_model),
            "subtree_bytes": [_state_bytes(part) for part in subtree_set.parts], "batch": batch, "plans": plans}


def format_cost_model(report: dict) -> str:
    mb = 1e6
    lines = [f"per sample: trunk {report['trunk_flops'] / 1e6:.1f} MFLOP, subtrees "
             + ", ".join(f"{f / 1e6:.1f}" for f in report["subtree_flops"]) + " MFLOP "
             + f"(classes {report['subtree_classes']}), total {report['total_flops'] / 1e6:.1f} MFLOP; "
             + f"features at the cut {report['cut_bytes_per_sample']} B",
             f"weights: trunk {report['trunk_bytes'] / mb:.2f} MB, subtrees "
             + ", ".join(f"{b / mb:.2f}" for b in report["subtree_bytes"]) + " MB",
             f"communication per batch of {report['batch']}:"]
    for plan in report["plans"]:
        lines.append(f"  {plan['workers']} workers: predicted speedup {plan['predicted_speedup']:.2f}x, "
                     f"placement {plan['placement']}, DistributedSplit {plan['logit_exchange'].replace('_', '-')} "
                     f"{plan['exchange_bytes_per_batch'] / mb:.3f} MB, DeviceParallel copies "
                     f"{plan['device_copy_bytes_per_batch'] / mb:.3f} MB")
    return "\n".join(lines)
