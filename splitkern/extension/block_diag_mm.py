"""block_diag_mm on the compiled extension (csrc/block_diag_mm.cpp, csrc/cuda/block_diag_mm.cu,
csrc/cutlass/).

On CUDA, fp16/bf16 calls run the CUTLASS sm90 grouped GEMMs where :func:`cutlass_reason` is empty
(an sm_90 GPU, a build with them, every group size a multiple of 8: TMA reads 16-byte aligned
group starts and rows), the wmma kernels otherwise. ``splitkern info`` shows the rule.
"""

import functools

import torch

_ops = torch.ops.splitkern
_CUTLASS_DTYPES = (torch.float16, torch.bfloat16)
CUTLASS_RULE = ("CUTLASS sm90 grouped GEMMs serve fp16/bf16 block_diag_mm (forward, grad_input, grad_weight) on "
                "sm_90 GPUs when every group size is a multiple of 8; other layouts and GPUs run the wmma kernels")


@functools.lru_cache(maxsize=None)
def _cutlass_built() -> bool:
    from splitkern import _C

    return "block_diag_mm_cutlass:cuda" in _C.kernels()


@functools.lru_cache(maxsize=None)
def _hopper(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device) == (9, 0)


def cutlass_reason(t: torch.Tensor, layout) -> str:
    """Why the CUTLASS kernels do not run block_diag_mm for tensors like ``t`` on ``layout``; empty if they do."""
    if not _cutlass_built():
        return "the extension was built without the CUTLASS kernels (nvidia-cutlass headers, sm_90a)"
    if t.device.type != "cuda" or not _hopper(t.device):
        return "CUTLASS kernels need an sm_90 (Hopper) GPU"
    if t.dtype not in _CUTLASS_DTYPES:
        return f"CUTLASS kernels take fp16/bf16, got {t.dtype}"
    if any(size % 8 for size in (*layout.in_sizes, *layout.out_sizes)):
        return "a group size is not a multiple of 8 (TMA needs 16-byte aligned group starts and rows)"
    return ""


def block_diag_mm(x, weight, bias, layout, in_index=None, out_index=None):
    if not cutlass_reason(x, layout):
        return block_diag_mm_cutlass(x, weight, bias, layout, in_index, out_index)
    return _ops.ext_block_diag_mm(x, weight, bias, layout.in_sizes, layout.out_sizes, in_index, out_index)


def block_diag_mm_cutlass(x, weight, bias, layout, in_index=None, out_index=None):
    """The forward on the CUTLASS sm90 grouped GEMM (an error for layouts :func:`cutlass_reason` refuses)."""
    return _ops.ext_block_diag_mm_cutlass(x, weight, bias, layout.in_sizes, layout.out_sizes, in_index, out_index)


def block_diag_mm_cutlass_grad_input(grad_out, weight, layout, in_index=None, out_index=None):
    return _ops.ext_block_diag_mm_cutlass_grad_input(grad_out, weight, layout.in_sizes, layout.out_sizes, in_index,
                                                     out_index)


def block_diag_mm_cutlass_grad_weight(grad_out, x, layout, in_index=None, out_index=None):
    return _ops.ext_block_diag_mm_cutlass_grad_weight(grad_out, x, layout.in_sizes, layout.out_sizes, in_index,
                                                      out_index)


PASSES = {"forward": 0, "grad_input": 1, "grad_weight": 2}
PROBLEM_COLUMNS = ("m", "n", "k", "a_off", "lda", "b_off", "ldb", "d_off", "ldd")


def block_diag_mm_cutlass_problems(which: str, layout, m: int) -> torch.Tensor:
    """The CUTLASS GEMMs of pass ``which`` (forward, grad_input, grad_weight) for ``m`` rows: an int64
    ``(P, 9)`` table of :data:`PROBLEM_COLUMNS` per listed (non-empty) group, computed on the host by the
    index math the GPU kernel runs (csrc/cutlass/problems.h)."""
    return _ops.ext_block_diag_mm_cutlass_problems(PASSES[which], layout.in_sizes, layout.out_sizes, m)


def block_diag_mm_cublas(x, weight, bias, layout, in_index=None, out_index=None):
    """The forward as one ``cublasGemmGroupedBatchedEx`` call (CUDA, fp16/bf16/fp32; no autograd): the
    benchmark's ``splitkern-cuda-cublas`` line. Built when setup.py finds cuBLAS (``kernels()`` then
    lists ``block_diag_mm_cublas:cuda``)."""
    return _ops.ext_block_diag_mm_cublas(x, weight, bias, layout.in_sizes, layout.out_sizes, in_index, out_index)


def block_diag_mm_grad_input(grad_out, weight, layout, in_index=None, out_index=None):
    if not cutlass_reason(grad_out, layout):
        return block_diag_mm_cutlass_grad_input(grad_out, weight, layout, in_index, out_index)
    return _ops.ext_block_diag_mm_grad_input(grad_out, weight, layout.in_sizes, layout.out_sizes, in_index,
                                             out_index)


def block_diag_mm_grad_weight(grad_out, x, layout, in_index=None, out_index=None):
    if not cutlass_reason(x, layout):
        return block_diag_mm_cutlass_grad_weight(grad_out, x, layout, in_index, out_index)
    return _ops.ext_block_diag_mm_grad_weight(grad_out, x, layout.in_sizes, layout.out_sizes, in_index, out_index)


def block_diag_mm_grad_bias(grad_out, out_index=None):
    return _ops.ext_block_diag_mm_grad_bias(grad_out, out_index)
