"""Group assignments of features and classes (docs/design.md §1.1).

An assignment of d items (features or classes) to G groups is softmax-
reparameterised: logits ``alpha`` (G, d) initialised N(0, 0.01^2), probabilities
``p = softmax(alpha, dim=0)`` (each column sums to 1), hard groups ``argmax`` over
groups. In a tree (e.g. 2 -> 4 -> 8 groups from lower to upper split layers) a lower
level sees the upper level's assignment merged: child groups map to parents evenly
and consecutively (4 -> 2 is [0, 0, 1, 1]), and their probabilities add up.
"""

from __future__ import annotations

import torch
from torch import nn


def merge_groups(probs: torch.Tensor, parents: int) -> torch.Tensor:
    """Sum the probabilities of consecutive child groups into ``parents`` groups: (G, d) -> (parents, d)."""
    groups = probs.shape[0]
    if parents < 1 or groups % parents:
        raise ValueError(f"cannot merge {groups} groups into {parents}: {groups} must be a multiple of it")
    return probs.view(parents, groups // parents, -1).sum(1)


class GroupAssignment(nn.Module):
    """Learnable soft assignment of ``features`` items to ``groups`` groups.

    ``probs()`` is (G, d), columns sum to 1; ``hard()`` is (d,) int64 group ids.
    ``probs(parents)`` merges consecutive groups for a lower tree level.
    """

    def __init__(self, groups: int, features: int, init_std: float = 0.01, *, device=None):
        super().__init__()
        if groups < 1 or features < 1:
            raise ValueError(f"an assignment needs groups >= 1 and features >= 1, got {groups} and {features}")
        self.groups, self.features = groups, features
        self.logits = nn.Parameter(torch.randn(groups, features, device=device) * init_std)

    def probs(self, parents: int | None = None) -> torch.Tensor:
        p = torch.softmax(self.logits, dim=0)
        return p if parents is None or parents == self.groups else merge_groups(p, parents)

    def hard(self, parents: int | None = None) -> torch.Tensor:
        return self.probs(parents).argmax(dim=0)

    @torch.no_grad()
    def set_hard(self, groups: torch.Tensor, confidence: float = 4.0) -> None:
        """Initialise from hard group ids (e.g. a clustering): logit ``confidence`` on the chosen group."""
        if groups.shape != (self.features,):
            raise ValueError(f"groups must have shape ({self.features},), got {tuple(groups.shape)}")
        self.logits.zero_()
        self.logits.scatter_(0, groups.to(self.logits.device).view(1, -1), confidence)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, features={self.features}"
