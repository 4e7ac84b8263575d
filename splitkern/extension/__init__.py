"""The compiled extension's kernels: calls into ``torch.ops.splitkern.ext_*`` (``splitkern._C``).

No autograd and no validation here (see :mod:`splitkern.ops`, whose custom ops call these
through :mod:`splitkern.backend` when the ``extension`` backend runs a call). Importing this
package loads ``splitkern._C`` (which registers only kernel implementations) and defines, from
:mod:`splitkern.registry`, the schemas they implement: ``splitkern::ext_<kernel>`` for every kernel
entry point, ``splitkern_emulated::<kernel>`` for those whose CUDA kernel also runs on the host
(tests). Each ext op's fake is its public kernel's, reached through the dispatcher, so this package
imports no op module. Importing it without a built extension raises ``ImportError``.
"""

import torch

from splitkern import _C  # noqa: F401  (loads the kernel implementations)
from splitkern import registry

_LIBRARIES = {namespace: torch.library.Library(namespace, "FRAGMENT")
              for namespace in (registry.EXTENSION_NAMESPACE, registry.EMULATED_NAMESPACE)}


def _public_fake(kernel: registry.Kernel):
    public = getattr(torch.ops.splitkern, kernel.fake_of or kernel.name)

    def fake(*args):
        return public(*args)  # under fake tensors: the public op's fake impl

    return fake


def _define(op: registry.Op) -> list[str]:
    """Define ``op``'s extension schemas (once per process); returns the ext op names."""
    names = []
    for kernel in op.kernels:
        name = f"ext_{kernel.name}"
        if not hasattr(torch.ops.splitkern, name):
            _LIBRARIES[registry.EXTENSION_NAMESPACE].define(name + kernel.extension_schema())
            torch.library.register_fake(f"splitkern::{name}", _public_fake(kernel),
                                        lib=_LIBRARIES[registry.EXTENSION_NAMESPACE])
        if kernel.emulated and not hasattr(torch.ops.splitkern_emulated, kernel.name):
            _LIBRARIES[registry.EMULATED_NAMESPACE].define(kernel.name + kernel.extension_schema())
        names.append(name)
    return names


EXT_OPS = tuple(name for op in registry.OPS.values() if "extension" in op.modules for name in _define(op))
