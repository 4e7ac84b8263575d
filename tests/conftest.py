import os

import torch

# Without a GPU, Triton kernels run in the CPU interpreter. It is chosen when the
# kernels are decorated, so this must happen before splitkern is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from tests.helpers import DEVICE  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _ieee_fp32():
    """fp32 kernels are checked against their references at 1e-4: both sides compute IEEE fp32.

    Every op takes its fp32 precision from torch's settings (splitkern.precision), as its
    reference does, but two TF32 computations with different summation orders differ by
    ~1e-3; tests that exercise TF32 set it themselves. Set through the legacy flags: once the
    new fp32_precision API has been used, torch's own reads of the legacy flags (torch.export
    does) raise.
    """
    backends = torch.backends
    saved = backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32
    backends.cuda.matmul.allow_tf32 = backends.cudnn.allow_tf32 = False
    yield
    backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32 = saved


@pytest.fixture(autouse=True)
def _backend_environment():
    """``SPLITKERN_BACKEND`` is read at import (and by ``backend.reload_environment()``, which tests that set it
    call): read it again after every test, once monkeypatch has restored it."""
    yield
    from splitkern import backend

    backend.reload_environment()


@pytest.fixture(autouse=True)
def _fresh_measured_choices():
    """Each test times its own split layers' strategies (the process-wide record would carry choices from one
    test to the next)."""
    from splitkern.nn.strategy import forget_measured_choices

    forget_measured_choices()
