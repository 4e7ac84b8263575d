"""Triton kernels only: no autograd, no validation (see :mod:`splitkern.ops`)."""

from splitkern.triton.block_diag_mm import INTERPRETED

__all__ = ["INTERPRETED"]
