"""Group layouts: host-side sizes plus the device tables kernels index with.

A block-diagonal layout with G groups has input sizes ``k_g`` and output sizes
``n_g``. Activations are group-contiguous ("grouped layout"): group g owns input
columns ``in_offsets[g]:in_offsets[g+1]`` and output columns
``out_offsets[g]:out_offsets[g+1]``. The weight is packed: block g is the row-major
``(n_g, k_g)`` matrix at ``weight[w_offsets[g]:w_offsets[g+1]]``.

Kernels get one base pointer per operand plus int32 offset tables and a tile table
(one row per output tile: group and tile start), so one launch covers all groups.
The tables are built once per (layout, device, tile size) and cached on the device,
so forward and backward never copy host data to the device.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Sequence

import torch


def _offsets(sizes: Sequence[int]) -> tuple[int, ...]:
    return (0, *itertools.accumulate(sizes))


def check_sizes(sizes, name: str) -> tuple[int, ...]:
    """Validate a list of group sizes (non-negative Python ints); return it as a tuple."""
    if isinstance(sizes, torch.Tensor):
        if sizes.dim() != 1 or sizes.dtype.is_floating_point or sizes.dtype == torch.bool:
            raise TypeError(f"{name} must be a 1-D integer tensor or a sequence of ints")
        sizes = sizes.tolist()
    if not isinstance(sizes, Sequence) or isinstance(sizes, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of ints, got {type(sizes).__name__}")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, int):
            raise TypeError(f"{name} must contain ints, got {type(s).__name__} ({s!r})")
        if s < 0:
            raise ValueError(f"{name} must be non-negative, got {list(sizes)}")
    if len(sizes) == 0:
        raise ValueError(f"{name} must name at least one group")
    return tuple(sizes)


class BlockLayout:
    """Sizes and offsets of a ragged block-diagonal matrix; use :func:`block_layout`."""

    def __init__(self, in_sizes: tuple[int, ...], out_sizes: tuple[int, ...]):
        if len(in_sizes) != len(out_sizes):
            raise ValueError(f"in_sizes and out_sizes must have the same number of groups, "
                             f"got {len(in_sizes)} and {len(out_sizes)}")
        self.in_sizes = in_sizes
        self.out_sizes = out_sizes
        self.groups = len(in_sizes)
        self.in_offsets = _offsets(in_sizes)
        self.out_offsets = _offsets(out_sizes)
        self.w_offsets = _offsets(list(map(operator.mul, in_sizes, out_sizes)))
        self.in_features = self.in_offsets[-1]
        self.out_features = self.out_offsets[-1]
        self.weight_numel = self.w_offsets[-1]
        # All sizes (hence all offsets) multiples of 8: kernels may use 16-byte vector accesses.
        self.aligned = all(s % 8 == 0 for s in in_sizes + out_sizes)
        self._device_tables: dict = {}

    def block(self, weight: torch.Tensor, g: int, kernel_size: tuple[int, ...] = ()) -> torch.Tensor:
        """Block g of a packed weight as an ``(n_g, k_g, *kernel_size)`` view.

        With a kernel (convolution) every block holds ``n_g * k_g * prod(kernel_size)``
        elements, row-major like PyTorch's ``(out, in, kh, kw)`` conv weight.
        """
        taps = math.prod(kernel_size)
        lo, hi = self.w_offsets[g] * taps, self.w_offsets[g + 1] * taps
        return weight[lo:hi].view(self.out_sizes[g], self.in_sizes[g], *kernel_size)

    def _cached(self, key, build):
        table = self._device_tables.get(key)
        if table is None:
            table = build()
            self._device_tables[key] = table
        return table

    def offsets(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """int32 ``(in_offsets, out_offsets, w_offsets)`` on ``device``, each of length G+1."""
        def build():
            rows = (self.in_offsets, self.out_offsets, self.w_offsets)
            return tuple(torch.tensor(r, dtype=torch.int32, device=device) for r in rows)
        return self._cached(("offsets", device), build)

    def column_tiles(self, device: torch.device, block: int, over: str) -> torch.Tensor:
        """int32 ``(T, 2)`` table of (group, first column) tiles of width ``block``.

        ``over="out"`` tiles the output columns (forward), ``over="in"`` the input
        columns (gradient of the input). Groups of size 0 get no tile.
        """
        sizes = self.out_sizes if over == "out" else self.in_sizes

        def build():
            rows = [(g, c) for g, s in enumerate(sizes) for c in range(0, s, block)]
            return torch.tensor(rows, dtype=torch.int32, device=device).view(-1, 2)
        return self._cached(("cols", over, block, device), build)

    def block_tiles(self, device: torch.device, block_n: int, block_k: int) -> torch.Tensor:
        """int32 ``(T, 3)`` table of (group, first row, first column) tiles of the weight blocks."""
        def build():
            rows = [(g, r, c)
                    for g, (n, k) in enumerate(zip(self.out_sizes, self.in_sizes))
                    for r in range(0, n if k else 0, block_n)
                    for c in range(0, k, block_k)]
            return torch.tensor(rows, dtype=torch.int32, device=device).view(-1, 3)
        return self._cached(("blocks", block_n, block_k, device), build)


    def tap_permutation(self, device: torch.device, taps: int, order: str) -> torch.Tensor:
        """int64 gather index that re-packs a conv weight (per group ``(n_g, k_g, taps)``, PyTorch's order)
        taps outer: per group ``(taps, k_g, n_g)`` for ``order="forward"``, ``(taps, n_g, k_g)`` for
        ``"grad_input"``; group g keeps its offset ``w_offsets[g] * taps``."""
        if order not in ("forward", "grad_input"):
            raise ValueError(f"order must be 'forward' or 'grad_input', got {order!r}")

        def build():
            dims = (2, 1, 0) if order == "forward" else (2, 0, 1)
            blocks = [torch.arange(lo * taps, hi * taps).view(n, k, taps).permute(dims).reshape(-1)
                      for lo, hi, n, k in zip(self.w_offsets, self.w_offsets[1:], self.out_sizes, self.in_sizes)]
            return torch.cat(blocks).to(device)
        return self._cached(("taps", taps, order, device), build)


def block_layout(in_sizes, out_sizes) -> BlockLayout:
    """The shared :class:`BlockLayout` for these group sizes (sequences of ints; one per distinct layout)."""
    return _shared_layout(tuple(in_sizes), tuple(out_sizes))


@functools.lru_cache(maxsize=4096)
def _shared_layout(in_sizes: tuple, out_sizes: tuple) -> BlockLayout:
    return BlockLayout(in_sizes, out_sizes)


def equal_groups(layout: "BlockLayout") -> tuple[int, int, int] | None:
    """(G, k, n) when every group has k inputs and n outputs (batched GEMMs apply)."""
    if len(set(layout.in_sizes)) == 1 and len(set(layout.out_sizes)) == 1 and layout.weight_numel:
        return layout.groups, layout.in_sizes[0], layout.out_sizes[0]
    return None
