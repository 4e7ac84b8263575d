"""splitkern: fast ragged block-diagonal layers for SplitNet.

Public API: :mod:`splitkern.ops` (custom ops), :mod:`splitkern.nn` (layers),
:mod:`splitkern.splitnet` (the method), :mod:`splitkern.models`,
:mod:`splitkern.parallel` (subtrees across streams, devices, processes),
:func:`use_backend` / ``SPLITKERN_BACKEND`` (backend choice, see
:mod:`splitkern.backend`), :func:`save` / :func:`load` (split models).
"""

from splitkern.backend import BackendUnavailableError, available_backends, use_backend
from splitkern import ops  # noqa: F401  (registers torch.ops.splitkern.*)
from splitkern import nn  # noqa: F401
from splitkern.splitnet.io import load, save

__version__ = "0.1.0"

__all__ = ["BackendUnavailableError", "available_backends", "load", "nn", "ops", "save", "use_backend",
           "__version__"]
