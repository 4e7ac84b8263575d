"""The compiled extension's kernels: calls into ``torch.ops.splitkern.ext_*`` (``splitkern._C``).

No autograd and no validation here (see :mod:`splitkern.ops`, whose custom ops call these
through :mod:`splitkern.backend`). The ``ext_*`` ops share the public ops' schemas, so
importing this package registers the same fake impls for them (for ``opcheck`` and
tracing them directly). Importing it without a built extension raises ``ImportError``.
"""

import importlib

import torch

from splitkern import _C  # noqa: F401  (loads the ext_* op library)

# the op modules (splitkern.ops re-exports functions under the same names)
_mm, _conv, _reg = (importlib.import_module(f"splitkern.ops.{op}")
                    for op in ("block_diag_mm", "grouped_conv", "group_weight_reg"))

_FAKES = {
    "ext_block_diag_mm": _mm.block_diag_mm_fake,
    "ext_block_diag_mm_cublas": _mm.block_diag_mm_fake,
    "ext_block_diag_mm_grad_input": _mm.block_diag_mm_grad_input_fake,
    "ext_block_diag_mm_grad_weight": _mm.block_diag_mm_grad_weight_fake,
    "ext_block_diag_mm_grad_bias": _mm.block_diag_mm_grad_bias_fake,
    "ext_grouped_conv": _conv.grouped_conv_fake,
    "ext_grouped_conv_grad_input": _conv.grouped_conv_grad_input_fake,
    "ext_grouped_conv_grad_weight": _conv.grouped_conv_grad_weight_fake,
    "ext_group_weight_reg_gemms": _reg.group_weight_reg_gemms_fake,
    "ext_group_weight_reg_gemms_backward": _reg.group_weight_reg_gemms_backward_fake,
}
for _name, _fake in _FAKES.items():
    torch.library.register_fake(f"splitkern::{_name}", _fake)

EXT_OPS = tuple(_FAKES)
