"""The compiled extension's kernels: calls into ``torch.ops.splitkern.ext_*`` (``splitkern._C``).

No autograd and no validation here (see :mod:`splitkern.ops`, whose custom ops call these
through :mod:`splitkern.backend` when the ``extension`` backend runs a call). Importing this
package loads ``splitkern._C`` (which registers only kernel implementations) and defines, from
:mod:`splitkern.registry`, the schemas they implement: ``splitkern::ext_<kernel>`` for every kernel
entry point, ``splitkern_emulated::<kernel>`` for those whose CUDA kernel also runs on the host
(tests). Each ext op's fake is its public kernel's, reached through the dispatcher when the fake
runs, so this package imports no op module. An op registered after this import gets its ext
schemas from :func:`define`. Importing it without a built extension raises ``ImportError``.
"""

import torch

from splitkern import _C  # noqa: F401  (loads the kernel implementations)
from splitkern import registry

_LIBRARIES = {namespace: torch.library.Library(namespace, "FRAGMENT")
              for namespace in (registry.EXTENSION_NAMESPACE, registry.EMULATED_NAMESPACE)}
_DEFINED: set[str] = set()


def _public_fake(kernel: registry.Kernel):
    public = kernel.fake_of or kernel.name

    def fake(*args, **kwargs):
        return getattr(torch.ops.splitkern, public)(*args, **kwargs)  # under fake tensors: its fake impl

    return fake


def define(op: registry.Op) -> list[str]:
    """Define ``op``'s extension schemas and fakes (once per process); returns its ext op names."""
    names = []
    for kernel in op.kernels:
        name = f"ext_{kernel.name}"
        if name not in _DEFINED:
            if hasattr(torch.ops.splitkern, name):  # an extension built before the registry defined its own
                raise ImportError(f"splitkern._C defines splitkern::{name} itself: it is a stale build, "
                                  "rebuild it (pip install -e . or make install)")
            _LIBRARIES[registry.EXTENSION_NAMESPACE].define(name + kernel.extension_schema())
            torch.library.register_fake(f"splitkern::{name}", _public_fake(kernel),
                                        lib=_LIBRARIES[registry.EXTENSION_NAMESPACE])
            if kernel.emulated:
                _LIBRARIES[registry.EMULATED_NAMESPACE].define(kernel.name + kernel.extension_schema())
            _DEFINED.add(name)
        names.append(name)
    return names


EXT_OPS = tuple(name for op in registry.OPS.values() if "extension" in op.modules for name in define(op))
