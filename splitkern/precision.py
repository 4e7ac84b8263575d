"""The fp32 precision of every op, decided once from torch's own settings.

An op computes fp32 the way the PyTorch op it replaces would: matmul-like ops
(``block_diag_mm``, ``group_weight_reg``) as ``torch.mm`` (cuBLAS settings), conv ops
(``grouped_conv``) as ``F.conv2d`` (cuDNN conv settings). Both the newer
``fp32_precision`` API and the legacy ``allow_tf32`` flags are honoured: torch mirrors a
legacy flag into the new attributes, so only the new ones are read (reading a legacy flag
raises once a user has set the new API).
"""

from __future__ import annotations

import torch

KINDS = ("matmul", "conv")


def _chain(kind: str) -> list[str | None]:
    backends = torch.backends
    if kind == "matmul":
        nodes = (backends.cuda.matmul, backends)
    else:
        nodes = (backends.cudnn.conv, backends.cudnn, backends)
    return [getattr(node, "fp32_precision", None) for node in nodes]


def _legacy_tf32(kind: str) -> bool:
    return torch.backends.cuda.matmul.allow_tf32 if kind == "matmul" else torch.backends.cudnn.allow_tf32


def fp32_precision(kind: str) -> str:
    """``"tf32"`` or ``"ieee"``: how torch computes fp32 ``kind`` ops (``"matmul"`` or ``"conv"``) right now.

    A setting of ``"none"`` defers to the parent setting (``torch.backends.cudnn.conv`` ->
    ``torch.backends.cudnn`` -> ``torch.backends``); all ``"none"`` means IEEE fp32.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    chain = _chain(kind)
    if chain[0] is None:  # a torch without the fp32_precision API
        return "tf32" if _legacy_tf32(kind) else "ieee"
    for setting in chain:
        if setting not in (None, "none"):
            return "tf32" if setting == "tf32" else "ieee"
    return "ieee"


def input_precision(dtype: torch.dtype, kind: str, *, interpreted: bool = False) -> str:
    """Triton ``tl.dot``'s ``input_precision`` for operands of ``dtype`` in a ``kind`` op.

    Only fp32 can use TF32; the interpreter (numpy) has no TF32 and always computes IEEE.
    """
    if dtype != torch.float32 or interpreted:
        return "ieee"
    return fp32_precision(kind)
