"""What SplitLinear and SplitConv2d share: packed block weights, group indices, dense conversion."""

from __future__ import annotations

import math

import torch
from torch import nn

from splitkern._dense import masked_dense_weight
from splitkern.backend import prepare_layout
from splitkern.layout import block_layout, check_sizes
from splitkern.nn._grouping import grouping
from splitkern.ops._checks import check_permutation


def _after_load_state_dict(module: "BlockDiagonalLayer", incompatible_keys) -> None:
    """A module-level hook (a lambda would make the layer unpicklable: ``torch.save(model)``, ``mp.spawn``)."""
    module._loaded()


class BlockDiagonalLayer(nn.Module):
    """Base of the split layers: a weight that is block-diagonal over G feature groups.

    ``weight`` packs the blocks (block g: ``(out_sizes[g], in_sizes[g], *kernel_size)``
    row-major, see :meth:`block`); ``bias`` is in grouped order; the buffers
    ``in_index``/``out_index`` map grouped positions to original feature positions.
    Subclasses implement :meth:`_run`.
    """

    def __init__(self, in_sizes, out_sizes, bias: bool, kernel_size: tuple[int, ...], in_index, out_index,
                 device, dtype):
        super().__init__()
        self.in_sizes = check_sizes(in_sizes, "in_sizes")
        self.out_sizes = check_sizes(out_sizes, "out_sizes")
        self.layout = block_layout(self.in_sizes, self.out_sizes)
        self.kernel_size = tuple(kernel_size)
        self.in_features = self.layout.in_features
        self.out_features = self.layout.out_features
        taps = math.prod(self.kernel_size)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.layout.weight_numel * taps, **factory))
        self.bias = nn.Parameter(torch.empty(self.out_features, **factory)) if bias else None
        self.register_buffer("in_index", self._index(in_index, self.in_features, "in_index", device))
        self.register_buffer("out_index", self._index(out_index, self.out_features, "out_index", device))
        self._note_identity()
        self.register_load_state_dict_post_hook(_after_load_state_dict)
        self.reset_parameters()
        prepare_layout(self.layout, self.weight.device)

    @staticmethod
    def _index(index, length: int, name: str, device) -> torch.Tensor:
        if index is None:
            return torch.arange(length, device=device)
        return check_permutation(index.cpu(), name, length, torch.device("cpu")).to(device)

    @torch.no_grad()
    def set_indices(self, in_index=None, out_index=None) -> None:
        """Replace the grouped -> original position maps (None: identity, i.e. grouped layout)."""
        for name, index in (("in_index", in_index), ("out_index", out_index)):
            buffer = getattr(self, name)
            buffer.copy_(self._index(index, buffer.numel(), name, buffer.device))
        self._note_identity()

    def _apply(self, fn, recurse=True):
        """``.to()``, ``.cuda()``, ``.half()``...: then the device tables for the new device."""
        result = super()._apply(fn, recurse)
        prepare_layout(self.layout, self.weight.device)
        return result

    def _loaded(self) -> None:  # load_state_dict(assign=True) may move the parameters
        self._note_identity()
        prepare_layout(self.layout, self.weight.device)

    def _note_identity(self) -> None:
        """Skip the fused gather/scatter where an index is the identity (checked off the hot path)."""
        for name in ("in_index", "out_index"):
            index = getattr(self, name).cpu()
            check_permutation(index, name, index.numel(), torch.device("cpu"))
            setattr(self, f"_{name}_is_identity", torch.equal(index, torch.arange(index.numel())))

    def reset_parameters(self) -> None:
        """Per block, as PyTorch initialises a dense layer of that block's size."""
        taps = math.prod(self.kernel_size)
        with torch.no_grad():
            for g in range(self.layout.groups):
                fan_in = self.in_sizes[g] * taps
                bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
                self.block(g).uniform_(-bound, bound)
                if self.bias is not None:
                    self.bias[self.layout.out_offsets[g]:self.layout.out_offsets[g + 1]].uniform_(-bound, bound)

    def block(self, g: int) -> torch.Tensor:
        """Weight block g as an ``(out_sizes[g], in_sizes[g], *kernel_size)`` view of ``weight``."""
        return self.layout.block(self.weight, g, self.kernel_size)

    def _run(self, x, in_index, out_index):
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_index = None if self._in_index_is_identity else self.in_index
        out_index = None if self._out_index_is_identity else self.out_index
        return self._run(x, in_index, out_index)

    def forward_grouped(self, x: torch.Tensor) -> torch.Tensor:
        """Like ``forward`` with inputs and outputs already in grouped order (no permutation)."""
        return self._run(x, None, None)

    @staticmethod
    def _grouping(dense_weight, in_groups, out_groups, num_groups):
        return grouping(in_groups, out_groups, dense_weight.shape[1], dense_weight.shape[0], num_groups)

    def _load_dense(self, dense_weight: torch.Tensor, dense_bias: torch.Tensor | None) -> None:
        """Copy the within-group blocks of a dense ``(out, in, *kernel)`` weight (original order)."""
        device = dense_weight.device
        grouped = dense_weight.detach()[self.out_index.to(device)][:, self.in_index.to(device)]
        lay = self.layout
        with torch.no_grad():
            for g in range(lay.groups):
                self.block(g).copy_(grouped[lay.out_offsets[g]:lay.out_offsets[g + 1],
                                            lay.in_offsets[g]:lay.in_offsets[g + 1]])
            if dense_bias is not None:
                self.bias.copy_(dense_bias.detach()[self.out_index.to(device)])

    def masked_dense_weight(self) -> torch.Tensor:
        """The dense ``(out, in, *kernel_size)`` weight (zeros between groups), original order."""
        return masked_dense_weight(self.weight.detach(), self.layout, self.in_index, self.out_index,
                                   self.kernel_size)

    def dense_bias(self) -> torch.Tensor | None:
        """The bias in original output order."""
        if self.bias is None:
            return None
        return torch.zeros_like(self.bias.detach()).index_copy_(0, self.out_index, self.bias.detach())

    def extra_repr(self) -> str:
        taps = math.prod(self.kernel_size)
        dense = self.in_features * self.out_features * taps
        params = self.weight.numel()
        share = f"{100.0 * params / dense:.1f}%" if dense else "n/a"
        return (f"in_sizes={list(self.in_sizes)}, out_sizes={list(self.out_sizes)}, "
                f"bias={self.bias is not None}, weights={params} ({share} of dense {dense})")
