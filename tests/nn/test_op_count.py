"""A split model runs no more ATen ops per eval forward than the dense model it came from.

Counted with ``TorchDispatchMode`` (every op that reaches the dispatcher: views, empties, copies), no
gradients, as a new user runs it after ``split()`` and after ``splitkern.accelerate``. An op added to the
split layers' path (a permute, a copy, a BatchNorm that is no longer folded) fails here.
"""

import collections
import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import splitkern
from splitkern.models import wrn
from splitkern.splitnet import split


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _ops_per_forward(model, x) -> collections.Counter:
    with torch.no_grad():
        model(x)  # "auto" layers choose here
        with _CountOps() as count:
            model(x)
    return count.ops


_MODELS: dict = {}


def _models(widen: int):
    """(dense, split) WRN-16-``widen`` 2-2-2 with balanced groups, eval mode."""
    if widen not in _MODELS:
        torch.manual_seed(0)
        dense = wrn(16, widen, 100).eval()
        aware = wrn(16, widen, 100, split="2-2-2")
        aware.load_state_dict(dense.state_dict(), strict=False)
        for a in aware.assignments.values():
            a.set_hard(torch.arange(a.features) % a.groups)
        _MODELS[widen] = dense, split(aware).eval()
    return _MODELS[widen]


@pytest.mark.parametrize("batch", [2, 32])
@pytest.mark.parametrize("widen", [2, 8])
def test_a_split_model_runs_no_more_ops_than_dense(widen, batch):
    dense, split_model = _models(widen)
    x = torch.randn(batch, 3, 32, 32)
    dense_ops = _ops_per_forward(dense, x)
    for name, model in (("split()", copy.deepcopy(split_model)),
                        ("accelerate", splitkern.accelerate(copy.deepcopy(split_model), x))):
        ops = _ops_per_forward(model, x)
        assert sum(ops.values()) <= sum(dense_ops.values()), (name, dict(ops), dict(dense_ops))
        assert ops["aten.native_batch_norm.default"] < dense_ops["aten.native_batch_norm.default"], name
