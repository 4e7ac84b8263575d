"""block_diag_mm on the compiled extension (csrc/block_diag_mm.cpp, csrc/cuda/block_diag_mm.cu)."""

import torch

_ops = torch.ops.splitkern


def block_diag_mm(x, weight, bias, layout, in_index=None, out_index=None):
    return _ops.ext_block_diag_mm(x, weight, bias, layout.in_sizes, layout.out_sizes, in_index, out_index)


def block_diag_mm_cublas(x, weight, bias, layout, in_index=None, out_index=None):
    """The forward as one ``cublasGemmGroupedBatchedEx`` call (CUDA, fp16/bf16/fp32; no autograd): the
    benchmark's ``splitkern-cuda-cublas`` line. Built when setup.py finds cuBLAS (``kernels()`` then
    lists ``block_diag_mm_cublas:cuda``)."""
    return _ops.ext_block_diag_mm_cublas(x, weight, bias, layout.in_sizes, layout.out_sizes, in_index, out_index)


def block_diag_mm_grad_input(grad_out, weight, layout, in_index=None, out_index=None):
    return _ops.ext_block_diag_mm_grad_input(grad_out, weight, layout.in_sizes, layout.out_sizes, in_index,
                                             out_index)


def block_diag_mm_grad_weight(grad_out, x, layout, in_index=None, out_index=None):
    return _ops.ext_block_diag_mm_grad_weight(grad_out, x, layout.in_sizes, layout.out_sizes, in_index, out_index)


def block_diag_mm_grad_bias(grad_out, out_index=None):
    return _ops.ext_block_diag_mm_grad_bias(grad_out, out_index)
