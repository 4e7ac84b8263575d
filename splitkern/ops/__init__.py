"""Public ops (``torch.library`` custom ops under ``torch.ops.splitkern``)."""

from splitkern.ops.block_diag_mm import block_diag_mm
from splitkern.ops.group_weight_reg import group_weight_reg
from splitkern.ops.grouped_conv import grouped_conv

__all__ = ["block_diag_mm", "group_weight_reg", "grouped_conv"]
