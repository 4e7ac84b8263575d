"""Public ops (``torch.library`` custom ops under ``torch.ops.splitkern``).

One function per op of :mod:`splitkern.registry` (``splitkern.ops.<op>``), each defined in its own
module ``splitkern/ops/<op>.py`` with its custom ops, fakes and autograd formula.
"""

from splitkern import registry as _registry

__all__ = sorted(op.name for op in _registry.OPS.values() if op.public.startswith(f"{__name__}."))
for _name in __all__:
    globals()[_name] = _registry.OPS[_name].function()  # imports splitkern.ops.<op>, rebinds the name
del _name
