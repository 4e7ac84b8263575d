"""splitkern.accelerate: folds, plans, and records a graph per repeated no-grad key (the recorder stubbed on CPU)."""

import pytest
import torch

import splitkern
from splitkern.inference import Accelerated
from splitkern.models import wrn
from splitkern.nn import _plan, folded_batchnorms, strategies
from splitkern.nn.strategy import split_layers
from splitkern.splitnet import split


def _split_model():
    torch.manual_seed(0)
    aware = wrn(16, 1, 10, split="2-2-2")
    for a in aware.assignments.values():
        a.set_hard(torch.arange(a.features) % a.groups)
    return split(aware, fold_batchnorm=False)


class FakeGraphs:
    """Records by running once as a capture would (layers see plan_key answer CAPTURING); replays eagerly."""

    def __init__(self, monkeypatch):
        self.monkeypatch, self.records, self.replays = monkeypatch, 0, 0

    def record(self, run, x):
        real = _plan.plan_key

        def capturing_key(*args, capturing=False):
            return real(*args, capturing=True) if capturing else _plan.CAPTURING
        self.records += 1
        with self.monkeypatch.context() as patch:
            patch.setattr(_plan, "plan_key", capturing_key)
            out = run(x.clone())

        def replay(y):
            self.replays += 1
            with torch.no_grad():
                return run(y)
        return replay, out


def test_accelerate_folds_plans_and_keeps_the_function():
    model = _split_model().train()
    x = torch.randn(4, 3, 32, 32)
    expected = _split_model().eval()(x)
    fast = splitkern.accelerate(model, x)
    assert isinstance(fast, Accelerated) and not model.training
    assert len(folded_batchnorms(model)) == 6  # conv1 -> bn2 in every block: 4 split, 2 unsplit
    assert all(choices for choices in strategies(model).values())  # every layer chose for the example's key
    with torch.no_grad():
        assert (fast(x) - expected).abs().max() <= 1e-5
    assert not fast.recorded  # CPU: no graphs


def test_a_repeated_no_grad_key_is_recorded_then_replayed(monkeypatch):
    model = _split_model()
    x = torch.randn(2, 3, 32, 32)
    expected = _split_model().eval()(x)
    graphs = FakeGraphs(monkeypatch)
    fast = splitkern.accelerate(model, x, capture=True)
    fast.graphs = graphs
    with torch.no_grad():
        for _ in range(4):
            assert (fast(x) - expected).abs().max() <= 1e-5
        assert (graphs.records, graphs.replays) == (1, 3)  # seen, recorded (and replayed), replayed twice
        fast(torch.randn(3, 3, 32, 32))  # a new key: eager
        assert graphs.records == 1 and len(fast.recorded) == 1
    fast(x)  # autograd records: eager
    assert graphs.replays == 3
    with torch.no_grad():
        model.get_submodule("stages.2.0.bn2").running_mean.add_(1)  # the model changed: graphs dropped
        fast(x)
        assert not fast.recorded and graphs.replays == 3
        fast(x)
        assert graphs.records == 2


def test_under_capture_layers_replay_their_chosen_plans(monkeypatch):
    model = _split_model()
    x = torch.randn(2, 3, 32, 32)
    fast = splitkern.accelerate(model, x, capture=True, fold=True)
    fast.graphs = FakeGraphs(monkeypatch)
    ops = []
    for layer in split_layers(model).values():
        monkeypatch.setattr(layer, "_op_forward", lambda x, ops=ops: ops.append(x) or pytest.fail("op ran"))
    with torch.no_grad():
        fast(x)
        fast(x)  # recorded: each layer runs its plan (no op, nothing built)
    assert fast.graphs.records == 1 and not ops


def test_a_layer_without_a_plan_runs_the_op_under_capture(monkeypatch):
    layer = splitkern.nn.SplitLinear([3, 5], [2, 4]).eval()
    real = _plan.plan_key
    monkeypatch.setattr(_plan, "plan_key", lambda *a, capturing=False: real(*a, capturing=True) if capturing
                        else _plan.CAPTURING)
    calls = []
    monkeypatch.setattr(layer, "_op_forward", lambda x: calls.append(x) or torch.zeros(x.shape[0], 6))
    with torch.no_grad():
        layer(torch.randn(2, 8))
    assert len(calls) == 1 and not layer.plans


def test_accelerate_checks_its_arguments():
    model = _split_model()
    with pytest.raises(TypeError, match="model must be"):
        splitkern.accelerate(object(), torch.zeros(1))
    with pytest.raises(TypeError, match="example must be a tensor"):
        splitkern.accelerate(model, [1, 2])
    with pytest.raises(TypeError, match="capture must be"):
        splitkern.accelerate(model, torch.zeros(1, 3, 32, 32), capture="yes")


@pytest.mark.gpu
def test_on_cuda_a_recorded_graph_replays_the_chosen_strategies():
    model = _split_model().cuda()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    with torch.no_grad():
        expected = _split_model().cuda().eval()(x)
        fast = splitkern.accelerate(model, x)
        outs = [fast(x) for _ in range(3)]
    assert len(fast.recorded) == 1
    for out in outs:
        assert (out - expected).abs().max() <= 1e-4


def test_a_model_with_a_non_tensor_output_stays_eager(monkeypatch):
    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _split_model()

        def forward(self, x):
            y = self.net(x)
            return y, y.sum()

    x = torch.randn(2, 3, 32, 32)
    fast = splitkern.accelerate(Pair(), x, capture=True)
    fast.graphs = FakeGraphs(monkeypatch)
    with torch.no_grad():
        for _ in range(3):
            assert isinstance(fast(x), tuple)
    assert fast.graphs.records == 0 and not fast.recorded
