"""splitkern: fast ragged block-diagonal layers for SplitNet.

Public API: :mod:`splitkern.ops` (custom ops), :mod:`splitkern.nn` (layers),
:mod:`splitkern.splitnet` (the method), :mod:`splitkern.models`,
:mod:`splitkern.parallel` (subtrees across streams, devices, processes),
:func:`accelerate` (a model made fast for inference: BatchNorm folded, strategies planned, CUDA graphs),
:func:`use_backend` / ``SPLITKERN_BACKEND`` (backend choice, see
:mod:`splitkern.backend`), :func:`save` / :func:`load` (split models).
"""

import torch

if torch.distributed.is_available():
    # torch.distributed.nn.functional binds ``group=group.WORLD`` as a default argument when it is
    # first imported. torch's custom ops import it (through torch._dynamo) on their first call; if
    # that happens while a process group exists, the group is held forever, its gloo threads outlive
    # destroy_process_group and can abort the process at exit ("terminate called without an active
    # exception"). Importing it here, before any group exists, binds None
    # (tests/parallel/test_distributed.py::test_destroy_process_group_frees_the_group).
    import torch.distributed.nn.functional  # noqa: F401

from splitkern.backend import BackendUnavailableError, available_backends, use_backend
from splitkern import ops  # noqa: F401  (registers torch.ops.splitkern.*)
from splitkern import nn  # noqa: F401
from splitkern.splitnet.io import load, save
from splitkern.inference import accelerate
from splitkern.splitnet.train import TrainConfig, train

__version__ = "0.2.1"

__all__ = ["BackendUnavailableError", "TrainConfig", "accelerate", "available_backends", "load", "nn", "ops", "save",
           "train", "use_backend", "__version__"]
