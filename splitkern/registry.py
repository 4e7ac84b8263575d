"""The op registry: one table that every layer of an op reads (docs/design.md §4, "Adding an op").

Each :class:`Op` row names the op, the custom ops ("kernel entry points") every backend
implements for it, with their schemas, and which backends have it. From this table:

* :mod:`splitkern.ops` defines ``torch.ops.splitkern.<kernel>`` (:func:`custom_op`) and binds the
  public function ``splitkern.ops.<op>``;
* :mod:`splitkern.backend` finds the module ``splitkern.<backend>.<op>`` that runs a call
  (:meth:`Op.implementation`) and refuses backends an op does not have;
* :mod:`splitkern.extension` defines the compiled extension's ``splitkern::ext_<kernel>`` (and its
  host-emulated ``splitkern_emulated::<kernel>``) ops from the same schemas and gives them the public
  kernel's fake (the C++ files only register implementations: csrc/ holds no schema);
* :mod:`splitkern.info` lists every op, and the static kernel report (:mod:`splitkern.analysis.kernels`)
  compiles every op's ``splitkern.triton.<op>.static_variants()``.

This module imports nothing from splitkern, so any of those can import it without a cycle.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import Callable

BACKENDS = ("reference", "triton", "extension")
EXTENSION_NAMESPACE = "splitkern"
EMULATED_NAMESPACE = "splitkern_emulated"


@dataclass(frozen=True)
class Kernel:
    """One entry point every backend of an op implements, as a function of the same name in its module.

    ``schema`` is the ``torch.library`` schema without the name (``"(Tensor x, SymInt[] sizes) -> Tensor"``).
    ``public``: also a custom op ``splitkern::<name>`` (False: extension only, e.g. a benchmark line).
    ``emulated``: the extension also runs its CUDA kernel on the host as ``splitkern_emulated::<name>``.
    ``fake_of``: the kernel whose fake impl this one shares (default: itself).
    """

    name: str
    schema: str
    public: bool = True
    emulated: bool = False
    fake_of: str = ""

    def extension_schema(self) -> str:
        """The schema of ``splitkern::ext_<name>``: the same, with concrete sizes (C++ kernels take
        ``IntArrayRef``, not symbolic ints)."""
        return self.schema.replace("SymInt", "int")


@dataclass(frozen=True)
class Op:
    """One op: its public function, kernel entry points and the module that runs them per backend.

    ``modules`` maps a backend to its module; by default ``splitkern.<backend>.<name>`` for each of
    :data:`BACKENDS`. ``public`` is the module that defines the custom ops, their fakes
    (``<kernel>_fake``) and the public function ``<name>`` (default ``splitkern.ops.<name>``).
    """

    name: str
    kernels: tuple[Kernel, ...]
    modules: dict[str, str] = field(default_factory=dict)
    public: str = ""

    def __post_init__(self):
        if not self.name.isidentifier():
            raise ValueError(f"op name must be an identifier, got {self.name!r}")
        if not self.kernels:
            raise ValueError(f"op {self.name!r}: kernels must list at least one entry point")
        modules = self.modules or {backend: f"splitkern.{backend}.{self.name}" for backend in BACKENDS}
        unknown = set(modules) - set(BACKENDS)
        if unknown:
            raise ValueError(f"op {self.name!r}: unknown backends {sorted(unknown)}; choose from {BACKENDS}")
        if "reference" not in modules:
            raise ValueError(f"op {self.name!r}: modules must name a 'reference' implementation (the oracle)")
        object.__setattr__(self, "modules", MappingProxyType(dict(modules)))
        object.__setattr__(self, "public", self.public or f"splitkern.ops.{self.name}")

    @property
    def backends(self) -> tuple[str, ...]:
        return tuple(b for b in BACKENDS if b in self.modules)

    def implementation(self, backend: str) -> ModuleType:
        """The module whose functions (one per kernel entry point) run this op on ``backend``."""
        return importlib.import_module(self.modules[backend])

    def function(self) -> Callable:
        """The public, differentiable function (``splitkern.ops.<name>`` for the built-in ops)."""
        return getattr(importlib.import_module(self.public), self.name)

    def static_variants(self) -> tuple:
        """Every Triton launch variant of this op, for the static kernel report (none without Triton)."""
        if "triton" not in self.modules:
            return ()
        return tuple(self.implementation("triton").static_variants())


_OPS: dict[str, Op] = {}
OPS = MappingProxyType(_OPS)
"""Every registered op by name (read-only view; add with :func:`register`)."""


def register(op: Op) -> Op:
    """Add ``op`` to the table (a name already taken raises ``ValueError``); returns it."""
    if not isinstance(op, Op):
        raise TypeError(f"op must be a splitkern.registry.Op, got {type(op).__name__}")
    if op.name in _OPS:
        raise ValueError(f"op {op.name!r} is already registered")
    taken = {k.name for other in _OPS.values() for k in other.kernels}
    clash = taken & {k.name for k in op.kernels}
    if clash:
        raise ValueError(f"op {op.name!r}: kernel names {sorted(clash)} are already registered")
    _OPS[op.name] = op
    return op


def unregister(name: str) -> None:
    """Remove op ``name`` (for tests that register a toy op)."""
    _OPS.pop(name)


def get(name: str) -> Op:
    """The registered op ``name``, else a ``ValueError`` naming the known ones."""
    try:
        return _OPS[name]
    except KeyError:
        raise ValueError(f"unknown op {name!r}; registered ops: {sorted(_OPS)}") from None


def kernel(name: str) -> Kernel:
    """The kernel entry point ``name`` of any registered op."""
    for op in _OPS.values():
        for k in op.kernels:
            if k.name == name:
                return k
    raise ValueError(f"unknown kernel entry point {name!r}")


def custom_op(name: str):
    """``@torch.library.custom_op("splitkern::<name>")`` with the registered schema of kernel ``name``."""
    import torch

    return torch.library.custom_op(f"splitkern::{name}", mutates_args=(), schema=kernel(name).schema)


_BLOCK = ("Tensor? in_index, Tensor? out_index) -> Tensor")
_SIZES = "SymInt[] in_sizes, SymInt[] out_sizes"
_CONV = f"{_SIZES}, SymInt[] kernel_size, SymInt[] stride, SymInt[] padding, SymInt[] dilation"

register(Op("block_diag_mm", (
    Kernel("block_diag_mm", f"(Tensor x, Tensor weight, Tensor? bias, {_SIZES}, {_BLOCK}", emulated=True),
    Kernel("block_diag_mm_grad_input", f"(Tensor grad_out, Tensor weight, {_SIZES}, {_BLOCK}", emulated=True),
    Kernel("block_diag_mm_grad_weight", f"(Tensor grad_out, Tensor x, {_SIZES}, {_BLOCK}", emulated=True),
    Kernel("block_diag_mm_grad_bias", "(Tensor grad_out, Tensor? out_index) -> Tensor"),
    Kernel("block_diag_mm_cublas", f"(Tensor x, Tensor weight, Tensor? bias, {_SIZES}, {_BLOCK}", public=False,
           fake_of="block_diag_mm"),
    # CUTLASS sm90 grouped GEMMs (built with the nvidia-cutlass headers for sm_90a), and their index math on CPU
    Kernel("block_diag_mm_cutlass", f"(Tensor x, Tensor weight, Tensor? bias, {_SIZES}, {_BLOCK}", public=False,
           fake_of="block_diag_mm"),
    Kernel("block_diag_mm_cutlass_grad_input", f"(Tensor grad_out, Tensor weight, {_SIZES}, {_BLOCK}", public=False,
           fake_of="block_diag_mm_grad_input"),
    Kernel("block_diag_mm_cutlass_grad_weight", f"(Tensor grad_out, Tensor x, {_SIZES}, {_BLOCK}", public=False,
           fake_of="block_diag_mm_grad_weight"),
    Kernel("block_diag_mm_cutlass_problems", f"(int which, {_SIZES}, SymInt m) -> Tensor", public=False),
)))
register(Op("grouped_conv", (
    Kernel("grouped_conv", f"(Tensor x, Tensor weight, Tensor? bias, {_CONV}, {_BLOCK}", emulated=True),
    Kernel("grouped_conv_grad_input", f"(Tensor grad_out, Tensor weight, Tensor x, {_CONV}, {_BLOCK}",
           emulated=True),
    Kernel("grouped_conv_grad_weight", f"(Tensor grad_out, Tensor x, Tensor weight, {_CONV}, {_BLOCK}",
           emulated=True),
)))
register(Op("group_weight_reg", (
    Kernel("group_weight_reg_gemms", "(Tensor weight, Tensor p, Tensor q) -> (Tensor, Tensor)", emulated=True),
    Kernel("group_weight_reg_gemms_backward",
           "(Tensor weight, Tensor p, Tensor q, Tensor grad_a, Tensor grad_b) -> (Tensor, Tensor, Tensor)",
           emulated=True),
)))
