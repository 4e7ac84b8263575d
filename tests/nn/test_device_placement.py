"""Layers on a CUDA device that is not the current one (DeviceParallel places subtrees there).

Triton launches on the current device and stream, whatever device its tensors are on, so
every Triton entry point that :mod:`splitkern.ops` calls must make its tensors' device
current (the C++/CUDA extension does it with a device guard).
"""

import contextlib
import importlib
import inspect
import re
import types

import pytest
import torch

import splitkern
from splitkern import registry
from splitkern.backend import available_backends
from splitkern.nn import SplitConv2d, SplitLinear

OPS = tuple(registry.OPS)


def _entry_points(op: str) -> list[str]:
    """Names that ``splitkern/ops/<op>.py`` calls on the backend module (``_backend(t).<name>(``)."""
    source = inspect.getsource(importlib.import_module(f"splitkern.ops.{op}"))
    return sorted(set(re.findall(r"_backend\(\w+\)\.(\w+)\(", source)))


def test_on_input_device_makes_the_tensors_device_current(monkeypatch):
    from splitkern.triton.block_diag_mm import on_input_device

    current = []

    @contextlib.contextmanager
    def fake_device(device):
        current.append(device)
        yield
        current.pop()

    monkeypatch.setattr(torch.cuda, "device", fake_device)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    seen = []
    run = on_input_device(lambda t, k=None: seen.append((list(current), k)))

    def on_gpu(index):
        return types.SimpleNamespace(device=torch.device("cuda", index), is_cuda=True, get_device=lambda: index)
    run(on_gpu(1), k=3)
    run(on_gpu(0), k=4)  # already current: no guard
    run(torch.zeros(1))  # CPU (the Triton interpreter): no device switch
    assert seen == [([torch.device("cuda", 1)], 3), ([], 4), ([], None)]


@pytest.mark.parametrize("op", OPS)
def test_every_triton_entry_point_runs_on_its_tensors_device(op):
    from splitkern.triton.block_diag_mm import on_input_device

    names = _entry_points(op)
    assert names, f"no backend calls found in splitkern/ops/{op}.py"
    assert names == sorted(k.name for k in registry.get(op).kernels if k.public)  # the registry lists them all
    module = importlib.import_module(f"splitkern.triton.{op}")
    wrapper_code = on_input_device(lambda t: t).__code__
    undecorated = [n for n in names if getattr(module, n).__code__ is not wrapper_code]
    assert not undecorated, f"splitkern.triton.{op}: {undecorated} launch on the current device, not their tensors'"


def _second_gpu_backends():
    if torch.cuda.device_count() < 2:
        return []
    return [b for b in available_backends("cuda:1", "block_diag_mm") if b != "reference"]


def _forward_backward(layer, x):
    x = x.detach().clone().requires_grad_()
    layer.zero_grad()
    y = layer(x)
    y.square().sum().backward()
    return y, x.grad, layer.weight.grad.clone()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("backend_name", _second_gpu_backends() or ["triton"])
def test_layers_on_the_second_gpu_match_the_reference(backend_name):
    torch.cuda.set_device(0)
    device = torch.device("cuda", 1)
    cases = [(SplitLinear([8, 0, 24], [16, 8, 8], bias=True, device=device), torch.randn(5, 32, device=device)),
             (SplitConv2d([8, 16], [16, 8], 3, 1, 1, 1, bias=True, device=device),
              torch.randn(2, 24, 9, 9, device=device))]
    for layer, x in cases:
        with splitkern.use_backend(backend_name):
            got = _forward_backward(layer, x)
        with splitkern.use_backend("reference"):
            expected = _forward_backward(layer, x)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
