"""Pure-PyTorch ragged block-diagonal matmul: the test oracle and the CPU path.

One GEMM per group (``torch.addmm`` on column slices, no per-element Python work),
or one batched GEMM when all groups have the same sizes; differentiable by plain
autograd so it can be gradchecked. Semantics are those of
:func:`splitkern.ops.block_diag_mm`.
"""

from __future__ import annotations

import torch

from splitkern._dense import masked_dense_weight  # noqa: F401  (re-exported: the tests' oracle reads it here)
from splitkern.layout import BlockLayout, equal_groups
from splitkern.reference._common import gather_columns, scatter_columns


def _batched(t: torch.Tensor, groups: int) -> torch.Tensor:
    """(M, G*s) -> (G, M, s) view."""
    return t.view(t.shape[0], groups, t.shape[1] // groups).transpose(0, 1)


def _unbatched(t: torch.Tensor) -> torch.Tensor:
    """(G, M, s) -> (M, G*s)."""
    return t.transpose(0, 1).reshape(t.shape[1], t.shape[0] * t.shape[2])


def block_diag_mm(x, weight, bias, layout: BlockLayout, in_index=None, out_index=None):
    """``y[:, out_g] = x[:, in_g] @ W_g.T + b[out_g]`` for x of shape (M, K); y (M, N)."""
    x = gather_columns(x, in_index)
    equal = equal_groups(layout)
    if equal:
        g, k, n = equal
        blocks_t = weight.view(g, n, k).transpose(1, 2)
        if bias is None:
            y = torch.bmm(_batched(x, g), blocks_t)
        else:
            y = torch.baddbmm(bias.view(g, 1, n), _batched(x, g), blocks_t)
        return scatter_columns(_unbatched(y), out_index)
    pieces = []
    for g in range(layout.groups):
        xg = x[:, layout.in_offsets[g]:layout.in_offsets[g + 1]]
        wg = layout.block(weight, g)
        if bias is None:
            pieces.append(xg @ wg.t())
        else:
            pieces.append(torch.addmm(bias[layout.out_offsets[g]:layout.out_offsets[g + 1]], xg, wg.t()))
    return scatter_columns(torch.cat(pieces, dim=1), out_index)


def block_diag_mm_grad_input(grad_out, weight, layout: BlockLayout, in_index=None, out_index=None):
    """dL/dx of shape (M, K): ``dx[:, in_g] = dy[:, out_g] @ W_g``."""
    grad_out = gather_columns(grad_out, out_index)
    equal = equal_groups(layout)
    if equal:
        g, k, n = equal
        grad_x = _unbatched(torch.bmm(_batched(grad_out, g), weight.view(g, n, k)))
        return scatter_columns(grad_x, in_index)
    pieces = [grad_out[:, layout.out_offsets[g]:layout.out_offsets[g + 1]] @ layout.block(weight, g)
              for g in range(layout.groups)]
    return scatter_columns(torch.cat(pieces, dim=1), in_index)


def block_diag_mm_grad_weight(grad_out, x, layout: BlockLayout, in_index=None, out_index=None):
    """dL/dW, packed like the weight: block g is ``dy[:, out_g].T @ x[:, in_g]``."""
    grad_out = gather_columns(grad_out, out_index)
    x = gather_columns(x, in_index)
    equal = equal_groups(layout)
    if equal:
        g = equal[0]
        return torch.bmm(_batched(grad_out, g).transpose(1, 2), _batched(x, g)).reshape(-1)
    pieces = [(grad_out[:, layout.out_offsets[g]:layout.out_offsets[g + 1]].t()
               @ x[:, layout.in_offsets[g]:layout.in_offsets[g + 1]]).reshape(-1)
              for g in range(layout.groups)]
    return torch.cat(pieces)


def block_diag_mm_grad_bias(grad_out, out_index=None):
    """dL/db in grouped order: ``db[j] = sum_m dy[m, out_index[j]]``."""
    return gather_columns(grad_out.sum(0, keepdim=True), out_index).squeeze(0)
