"""Group ids -> group sizes and permutations (shared by the split layers)."""

from __future__ import annotations

import torch


def check_group_ids(ids, name: str, length: int) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a LongTensor of group ids, got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer (LongTensor) tensor of group ids, got {ids.dtype}")
    if ids.dim() != 1 or ids.numel() != length:
        raise ValueError(f"{name} must have shape ({length},), got {tuple(ids.shape)}")
    return ids.detach().to(device="cpu", dtype=torch.int64)


def grouping(in_groups, out_groups, in_features: int, out_features: int, num_groups=None):
    """Sizes and stable group-sorting permutations for per-feature group ids.

    Returns ``(in_sizes, out_sizes, in_index, out_index)``: ``in_index[j]`` is the
    original input feature at grouped position j (features of group 0 first, in
    their original order), likewise ``out_index``.
    """
    in_ids = check_group_ids(in_groups, "in_groups", in_features)
    out_ids = check_group_ids(out_groups, "out_groups", out_features)
    both = torch.cat([in_ids, out_ids])
    if both.numel() and int(both.min()) < 0:
        raise ValueError("group ids must be >= 0 (in_groups/out_groups)")
    seen = int(both.max()) + 1 if both.numel() else 1
    if num_groups is None:
        num_groups = seen
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
    for ids, name in ((in_ids, "in_groups"), (out_ids, "out_groups")):
        if ids.numel() and int(ids.max()) >= num_groups:
            raise ValueError(f"{name} has id {int(ids.max())}, outside [0, num_groups={num_groups})")
    in_sizes = torch.bincount(in_ids, minlength=num_groups).tolist()
    out_sizes = torch.bincount(out_ids, minlength=num_groups).tolist()
    in_index = torch.sort(in_ids, stable=True).indices
    out_index = torch.sort(out_ids, stable=True).indices
    return in_sizes, out_sizes, in_index, out_index
