"""Hard groupings that do not come from training: clustering, weight-mass propagation, random, NMI.

* :func:`kmeans`: Lloyd's k-means (k-means++ init) on rows, e.g. the classes' FC weight rows:
  the authors' clustering baseline for class groups.
* :func:`cluster_groups`: both together, the clustering init of every assignment.
* :func:`propagate_groups`: given the class groups, give every feature the group its
  weights feed most (top layer first), so a whole split tree follows from the classes.
* :func:`random_balanced`: equal-sized random groups.
* :func:`nmi`: normalised mutual information (arithmetic mean of entropies, as sklearn).
"""

from __future__ import annotations

import numpy as np
import torch

from splitkern._reg_math import weight_energy
from splitkern.splitnet.plan import plan_of


def kmeans(rows: torch.Tensor, k: int, *, iters: int = 100, seed: int = 0, balanced: bool = False) -> torch.Tensor:
    """Cluster ``rows`` (n, d) into ``k`` groups; returns (n,) int64 ids. Empty clusters are re-seeded.

    ``balanced``: every assignment step gives each group ``n // k`` or ``n // k + 1`` rows
    (:func:`balanced_assign`), so the groups come out equal-sized.
    """
    gen = torch.Generator().manual_seed(seed)
    x = rows.detach().float().cpu()
    n = x.shape[0]
    centres = x[torch.randint(0, n, (1,), generator=gen)]
    for _ in range(1, k):  # k-means++
        dist = torch.cdist(x, centres).min(1).values.square()
        probs = dist / dist.sum() if dist.sum() > 0 else torch.full((n,), 1.0 / n)
        centres = torch.cat([centres, x[torch.multinomial(probs, 1, generator=gen)]])
    ids = torch.zeros(n, dtype=torch.int64)
    for _ in range(iters):
        dist = torch.cdist(x, centres)
        new_ids = balanced_assign(dist) if balanced else dist.argmin(1)
        for c in range(k):
            members = x[new_ids == c]
            centres[c] = members.mean(0) if len(members) else x[torch.randint(0, n, (1,), generator=gen)][0]
        if torch.equal(new_ids, ids):
            break
        ids = new_ids
    return ids


def balanced_assign(dist: torch.Tensor) -> torch.Tensor:
    """(n, k) distances -> (n,) ids with group g holding ``n // k`` rows, plus one for ``g < n % k``:
    pairs taken greedily in increasing distance, each row to its nearest group with room left."""
    n, k = dist.shape
    capacity = torch.full((k,), n // k, dtype=torch.long)
    capacity[: n % k] += 1
    ids = torch.full((n,), -1, dtype=torch.long)
    for flat in torch.argsort(dist.flatten(), stable=True).tolist():
        i, g = divmod(flat, k)
        if ids[i] < 0 and capacity[g] > 0:
            ids[i] = g
            capacity[g] -= 1
    return ids


def random_balanced(n: int, k: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.arange(n) % k)[torch.randperm(n, generator=gen)]


def cluster_groups(model, seed: int = 0, *, balanced: bool = False) -> dict[str, torch.Tensor]:
    """The clustering init of every assignment: k-means of the classes' rows of the last split
    layer (``balanced``: equal-sized class groups, :func:`kmeans`), propagated down the split tree
    (:func:`propagate_groups`)."""
    plan = plan_of(model)
    last = next(name for name, role in plan.layers.items() if role.out_key == plan.output_key)
    classes = kmeans(model.get_submodule(last).weight, plan.groups(plan.layers[last].level), seed=seed,
                     balanced=balanced)
    return propagate_groups(model, classes)


def propagate_groups(model, class_groups: torch.Tensor) -> dict[str, torch.Tensor]:
    """Native hard groups for every assignment of a split-aware model, from the class groups down.

    Layer by layer from the logits, every input feature scores each group by the mean
    energy (mean squared weight) it sends to that group's output features, and features
    are dealt to groups in order of preference with group g taking its share of the
    outputs (``d_in * n_g / n``, largest remainder). Without the quota a large group wins
    every feature by sheer size and leaves the others empty.
    """
    plan = plan_of(model)
    modules = dict(model.named_modules())
    known = {plan.output_key: class_groups.cpu()}
    while len(known) < len(model.assignments):
        mass: dict[str, torch.Tensor] = {}
        outputs: dict[str, torch.Tensor] = {}
        for name, role in plan.layers.items():
            native = model.assignments[role.in_key].groups
            if role.in_key in known or role.out_key not in known or native != plan.groups(role.level):
                continue
            out_ids = known[role.out_key] // (model.assignments[role.out_key].groups // native)
            energy = weight_energy(modules[name].weight.detach()).cpu()  # (out, in)
            onehot = torch.nn.functional.one_hot(out_ids, native).float()  # (out, G)
            mass[role.in_key] = mass.get(role.in_key, 0) + onehot.t() @ energy
            outputs[role.in_key] = outputs.get(role.in_key, 0) + onehot.sum(0)
        if not mass:
            raise RuntimeError(f"cannot propagate groups to {sorted(set(model.assignments) - set(known))}")
        known.update({key: deal_features(m / outputs[key].clamp_min(1)[:, None], outputs[key])
                      for key, m in mass.items()})
    return known


def deal_features(score: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
    """(G, d) affinities -> (d,) group ids, group g taking ``round(d * shares[g] / sum(shares))``.

    Features go to groups in decreasing order of their normalised preference
    ``score[g, i] / sum_g score[g, i]``, each to its most preferred group with room left.
    """
    groups, d = score.shape
    quota = shares.double() / shares.sum().clamp_min(1) * d
    capacity = quota.floor().long()
    capacity[torch.argsort(quota - capacity, descending=True)[: d - int(capacity.sum())]] += 1
    preference = score / score.sum(0, keepdim=True).clamp_min(1e-30)
    ids = torch.full((d,), -1, dtype=torch.long)
    for flat in torch.argsort(preference.flatten(), descending=True, stable=True).tolist():
        g, i = divmod(flat, d)
        if ids[i] < 0 and capacity[g] > 0:
            ids[i] = g
            capacity[g] -= 1
    return ids


def apply_groups(model, groups: dict[str, torch.Tensor], confidence: float = 4.0) -> None:
    for key, ids in groups.items():
        model.assignments[key].set_hard(ids, confidence)


def nmi(a, b) -> float:
    """Normalised mutual information of two labelings (arithmetic normalisation)."""
    a, b = np.asarray(a), np.asarray(b)
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    joint = np.zeros((ia.max() + 1, ib.max() + 1))
    np.add.at(joint, (ia, ib), 1)
    joint /= joint.sum()
    pa, pb = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mi = float((joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])).sum())
    ha, hb = -float((pa * np.log(pa)).sum()), -float((pb * np.log(pb)).sum())
    denom = (ha + hb) / 2
    return mi / denom if denom > 0 else 1.0
