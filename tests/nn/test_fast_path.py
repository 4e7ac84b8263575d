"""The split layers' eager path (splitkern.nn._plan): bit for bit the registered op where it runs the op's
kernels, the op itself wherever a trace or transform records the call, plans rebuilt when what they hold
changes, training strategies that compute the op's gradients, and a fixed budget of Python calls per call."""

import sys

import pytest
import torch

from splitkern import use_backend
from splitkern.nn import SplitConv2d, SplitLinear, _plan
from splitkern.nn.strategy import forget_measured_choices
from splitkern.ops import block_diag_mm, grouped_conv
from tests.helpers import DEVICE, assert_close

# (in_sizes, out_sizes), as the op tests: equal, ragged, empty groups (no inputs / no outputs), odd-sized
LAYOUTS = {
    "equal": ((4, 4), (6, 6)),
    "ragged": ((3, 7, 2), (5, 1, 4)),
    "empty": ((3, 0, 5), (2, 4, 0)),
    "odd": ((1, 3), (5, 7)),
}


def _ids(sizes):
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))[torch.randperm(sum(sizes))]


def _linear(layout, bias=True, permuted=True):
    in_sizes, out_sizes = LAYOUTS[layout]
    dense = torch.nn.Linear(sum(in_sizes), sum(out_sizes), bias=bias)
    if permuted:
        return SplitLinear.from_dense(dense, _ids(in_sizes), _ids(out_sizes), len(in_sizes)).to(DEVICE)
    return SplitLinear(in_sizes, out_sizes, bias=bias, device=DEVICE)


def _conv(layout, bias=True, permuted=True):
    in_sizes, out_sizes = LAYOUTS[layout]
    dense = torch.nn.Conv2d(sum(in_sizes), sum(out_sizes), 3, 1, 1, bias=bias)
    if permuted:
        return SplitConv2d.from_dense(dense, _ids(in_sizes), _ids(out_sizes), len(in_sizes)).to(DEVICE)
    return SplitConv2d(in_sizes, out_sizes, 3, 1, 1, bias=bias, device=DEVICE)


def _input(layer):
    if isinstance(layer, SplitConv2d):
        return torch.randn(2, layer.in_channels, 5, 4, device=DEVICE)
    return torch.randn(3, 2, layer.in_features, device=DEVICE)


def _registered_op(layer, x):
    """The layer's function through the public op (the registered custom op and its autograd)."""
    index = {"in_index": None if layer.grouped_input else layer.in_index,
             "out_index": None if layer.grouped_output else layer.out_index}
    sizes = {"in_sizes": layer.in_sizes, "out_sizes": layer.out_sizes}
    if isinstance(layer, SplitConv2d):
        return grouped_conv(x, layer.weight, layer.bias, **sizes, kernel_size=layer.kernel_size, stride=layer.stride,
                            padding=layer.padding, dilation=layer.dilation, **index)
    return block_diag_mm(x, layer.weight, layer.bias, **sizes, **index)


def _output_and_grads(fn, layer, x, autocast):
    x = x.clone().requires_grad_(True)
    for p in layer.parameters():
        p.grad = None
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=autocast):
        y = fn(x)
    y.float().square().sum().backward()
    return [y, x.grad, layer.weight.grad] + ([layer.bias.grad] if layer.bias is not None else [])


def _assert_bitwise(actual, expected):
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype and torch.equal(a, e)


# every layout in fp32; under bf16 autocast an equal and a ragged one
PRECISIONS = [(layout, False) for layout in LAYOUTS] + [("equal", True), ("ragged", True)]


@pytest.mark.parametrize("permuted", [True, False], ids=["indices", "grouped"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layout, autocast", PRECISIONS, ids=[f"{lay}-{'autocast' if a else 'fp32'}"
                                                              for lay, a in PRECISIONS])
@pytest.mark.parametrize("make", [_linear, _conv], ids=["linear", "conv"])
def test_the_eager_op_path_is_the_registered_op_bit_for_bit(make, layout, autocast, bias, permuted):
    layer = make(layout, bias, permuted)
    layer.strategy = "op"
    x = _input(layer)
    fast = _output_and_grads(layer, layer, x, autocast)
    assert layer.plans and all(plan.strategy == "op" for plan in layer.plans.values())
    _assert_bitwise(fast, _output_and_grads(lambda t: _registered_op(layer, t), layer, x, autocast))
    with torch.no_grad(), torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=autocast):
        _assert_bitwise([layer(x)], [_registered_op(layer, x)])


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "autocast"])
@pytest.mark.parametrize("layout", ["equal", "ragged", "empty"])
@pytest.mark.parametrize("make", [_linear, _conv], ids=["linear", "conv"])
def test_every_strategy_trains_like_the_op(make, layout, autocast):
    layer = make(layout)
    x = _input(layer)
    expected = _output_and_grads(lambda t: _registered_op(layer, t), layer, x, autocast)
    tolerance = 3e-2 if autocast else 1e-5  # bf16: another summation order rounds differently
    for name in layer.candidates():
        layer.strategy = name
        actual = _output_and_grads(layer, layer, x, autocast)
        assert [plan.strategy for plan in layer.plans.values()] == [name]
        for a, e in zip(actual, expected):
            assert a.dtype == e.dtype, name
            assert_close(a.float(), e.float(), rtol=tolerance, atol=tolerance)


def test_auto_times_training_calls_and_keeps_the_choice():
    layer = _conv("equal")
    x = _input(layer).requires_grad_(True)
    layer(x).sum().backward()
    (key, name), = layer.chosen.items()
    assert key[4] is True and key[5] is None and name in layer.candidates()
    grads = layer.weight.grad.clone()
    layer(x).sum().backward()  # timing used torch.autograd.grad: only the two real calls accumulated
    assert_close(layer.weight.grad, 2 * grads)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        layer(x).float().sum().backward()
    assert {k[5] for k in layer.chosen} == {None, torch.bfloat16}


def test_a_forced_backend_runs_the_op_on_it():
    layer = _linear("ragged")
    x = _input(layer)
    with use_backend("reference"), torch.no_grad():
        y = layer(x)
    (key, plan), = layer.plans.items()
    assert key[6] == "reference" and plan.strategy == "op" and not layer.chosen
    assert_close(y, _registered_op(layer, x).detach())


def _assert_no_plan(layer, y, x):
    assert not layer.plans and not layer.chosen
    assert_close(y, _registered_op(layer, x).detach())


@pytest.mark.parametrize("make", [_linear, _conv], ids=["linear", "conv"])
def test_traces_transforms_fake_tensors_and_empty_batches_see_the_registered_op(make):
    layer = make("ragged")
    x = _input(layer)
    _assert_no_plan(layer, torch.compile(layer, fullgraph=True)(x), x)
    _assert_no_plan(layer, torch.export.export(layer, (x,)).module()(x), x)
    _assert_no_plan(layer, torch.jit.trace(layer, (x,), check_trace=False)(x), x)
    _assert_no_plan(layer, torch.func.vmap(layer)(x.unsqueeze(0)).squeeze(0), x)
    _assert_no_plan(layer, layer(x[:0]), x[:0])
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        y = layer(mode.from_tensor(x))
    assert y.shape == _registered_op(layer, x).shape and not layer.plans


def test_plans_are_rebuilt_after_to_dtype_load_and_a_new_batch():
    layer = _linear("ragged")
    x = _input(layer)
    with torch.no_grad():
        layer(x)
        first = next(iter(layer.plans.values()))
        layer(x)
        assert next(iter(layer.plans.values())) is first  # a repeated call reuses its plan
        layer(x[:1])  # a new batch: a new key
        assert len(layer.plans) == 2
        layer.to(DEVICE)
        assert not layer.plans  # .to() drops them (device tables and prepared weights follow the move)
        layer.double()
        y = layer(x.double())
        assert next(iter(layer.plans))[1] == torch.float64
        assert_close(y, _registered_op(layer, x.double()))
        fresh = _linear("ragged").double()
        layer.load_state_dict(fresh.state_dict())
        assert not layer.plans
        assert_close(layer(x.double()), _registered_op(fresh, x.double()))
        layer.weight.mul_(3)  # an in-place edit moves the version counter: the prepared weights are rebuilt
        assert_close(layer(x.double()), _registered_op(layer, x.double()))


def _python_calls(fn) -> int:
    calls = [0]

    def count(frame, event, arg):
        if event == "call":
            calls[0] += 1
    sys.setprofile(count)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls[0]


# Python calls a planned call makes beyond the dense layer's (no-grad forward, forward + backward), as measured
# (linear, conv: masked_dense 5-6, 12-13; grouped 7, 10; op 11-12, 33-34) plus one or two of slack: the plan
# key (each torch flag a C call), the stamp of prepared weights, the strategy's closures; "op" adds the
# backend's own Python (the reference here) and, in training, the op's eager backward.
EXTRA_CALLS = {"masked_dense": (7, 14), "grouped": (8, 11), "op": (13, 35)}


@pytest.mark.parametrize("make", [_linear, _conv], ids=["linear", "conv"])
def test_a_planned_call_stays_within_its_python_call_budget(make):
    """A regression of the host path (a check, lookup or wrapper added per call) fails here without timing."""
    layer = make("equal")
    dense = layer.to_dense()
    x = _input(layer)
    xg = x.clone().requires_grad_(True)

    def calls(module):
        with torch.no_grad():
            module(x)
            no_grad = _python_calls(lambda: module(x))
        module(xg).sum().backward()
        return no_grad, _python_calls(lambda: module(xg).sum().backward())

    dense_calls = calls(dense)
    for name, budget in EXTRA_CALLS.items():
        layer.strategy = name
        extra = tuple(split - plain for split, plain in zip(calls(layer), dense_calls))
        assert extra[0] <= budget[0] and extra[1] <= budget[1], (name, extra, budget)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["equal", "ragged"])
@pytest.mark.parametrize("make", [_linear, _conv], ids=["linear", "conv"])
def test_on_cuda_the_eager_op_path_is_the_registered_op_bit_for_bit(make, layout, dtype):
    """Triton's kernels through the eager path and through the registered op, in 16 bits."""
    layer = make(layout).cuda().to(dtype)
    layer.strategy = "op"
    x = _input(layer).cuda().to(dtype)
    _assert_bitwise(_output_and_grads(layer, layer, x, False),
                    _output_and_grads(lambda t: _registered_op(layer, t), layer, x, False))
    key = next(iter(layer.plans))
    assert key[0].type == "cuda" and key[1] == dtype


@pytest.mark.gpu
def test_on_cuda_a_captured_graph_records_the_op_and_replays_it():
    layer = _linear("ragged").cuda()
    x = _input(layer).cuda()
    with torch.no_grad():
        expected = layer(x)
        layer.refresh()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            layer(x)  # warm-up outside capture (on a side stream, as torch.cuda.graphs recommends)
        torch.cuda.current_stream().wait_stream(stream)
        planned = len(layer.plans)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = layer(x)
        graph.replay()
    assert len(layer.plans) == planned  # capture built no plan: it recorded the registered op
    assert_close(y, expected)


def test_a_layer_like_one_already_timed_takes_its_choice_without_timing(monkeypatch):
    first, twin = _conv("equal"), _conv("equal")
    x = _input(first)
    with torch.no_grad():
        first(x)
    first(x.requires_grad_(True)).sum().backward()

    def no_timing(*args):
        raise AssertionError("timed a layer like one already measured")
    monkeypatch.setattr(_plan, "fastest", no_timing)
    with torch.no_grad():
        twin(x)
    twin(x).sum().backward()
    assert twin.chosen == first.chosen  # the same strategies: the two layers compute the same bits
    other = _conv("equal", bias=False)  # another signature (no bias) is timed on its own
    with pytest.raises(AssertionError, match="already measured"):
        with torch.no_grad():
            other(x)
    forget_measured_choices()
    fresh = _conv("equal")
    with pytest.raises(AssertionError, match="already measured"):
        with torch.no_grad():
            fresh(x)
