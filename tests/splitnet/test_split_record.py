"""The split record of a split model (splitkern.splitnet.plan.SplitRecord) and the layers' group slicing."""

import copy
import io
import pickle

import pytest
import torch

import splitkern
from splitkern.models import wrn
from splitkern.nn import SplitConv2d, SplitLinear
from splitkern.splitnet import split
from splitkern.splitnet.plan import SplitRecord, is_split, split_record
from tests.splitnet.test_wrn_split import randomised


@pytest.mark.parametrize("spec", ["4", "2-2"])
def test_record_holds_what_split_was_given(spec):
    aware = randomised(spec)
    expected_hard = {key: a.hard().cpu() for key, a in aware.assignments.items()}
    expected_plan = aware.split_plan
    record = split_record(split(aware))
    assert isinstance(record, SplitRecord)
    assert record.model == type(aware).__name__ == "WideResNet"
    assert record.config == aware.config
    assert record.spec == spec
    assert record.plan is expected_plan
    assert record.hard.keys() == expected_hard.keys()
    for key, ids in expected_hard.items():
        assert torch.equal(record.hard[key], ids)
    assert record.meta() == {"model": record.model, "config": record.config, "spec": record.spec,
                             "hard": record.hard}
    with pytest.raises(AttributeError):
        record.spec = "8"  # frozen


@pytest.mark.parametrize("model", [wrn(10, 1, 10), wrn(10, 1, 10, split="2"), torch.nn.Linear(3, 2)],
                         ids=["dense", "split-aware", "plain"])
def test_accessor_rejects_a_model_that_is_not_split(model):
    assert not is_split(model)
    with pytest.raises(ValueError, match="not a split model"):
        split_record(model)


def _round_trips():
    def via_torch_save(obj):
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        buffer.seek(0)
        return torch.load(buffer, weights_only=False)

    return {"pickle": lambda obj: pickle.loads(pickle.dumps(obj)), "torch.save": via_torch_save,
            "deepcopy": copy.deepcopy}


@pytest.mark.parametrize("trip", ["pickle", "torch.save", "deepcopy"])
def test_record_survives_pickling(trip):
    model = split(randomised("2-2")).eval()
    again = _round_trips()[trip](model)
    original, copied = split_record(model), split_record(again)
    assert (copied.model, copied.config, copied.spec) == (original.model, original.config, original.spec)
    assert copied.plan == original.plan
    for key, ids in original.hard.items():
        assert torch.equal(copied.hard[key], ids)


def test_save_and_load_keep_the_record(tmp_path):
    model = split(randomised("2-2")).eval()
    loaded = splitkern.load(splitkern.save(model, tmp_path / "split.pt"))
    original, copied = split_record(model), split_record(loaded)
    assert (copied.model, copied.config, copied.spec) == (original.model, original.config, original.spec)
    for key, ids in original.hard.items():
        assert torch.equal(copied.hard[key], ids)


def _layer(kind, in_sizes, out_sizes, bias):
    torch.manual_seed(0)
    in_index, out_index = torch.randperm(sum(in_sizes)), torch.randperm(sum(out_sizes))
    if kind == "linear":
        return SplitLinear(in_sizes, out_sizes, bias=bias, in_index=in_index, out_index=out_index)
    return SplitConv2d(in_sizes, out_sizes, 3, stride=2, padding=1, bias=bias, in_index=in_index,
                       out_index=out_index)


SIZES = [((3, 0, 5, 2), (4, 2, 0, 3)), ((2, 2), (0, 0)), ((0, 4, 1), (3, 0, 2))]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_narrow_groups_equals_the_masked_dense_weight(kind, sizes, bias):
    layer = _layer(kind, *sizes, bias)
    dense = layer.masked_dense_weight()
    dense_bias = layer.dense_bias()
    groups = len(sizes[0])
    for lo in range(groups):
        for hi in range(lo + 1, groups + 1):
            part = layer.narrow_groups(lo, hi)
            inputs, outputs = layer.group_slice(lo, hi)
            assert type(part) is type(layer)
            assert part.in_sizes == sizes[0][lo:hi] and part.out_sizes == sizes[1][lo:hi]
            assert part.grouped_input and part.grouped_output
            rows, cols = layer.out_index[outputs], layer.in_index[inputs]
            assert torch.equal(part.masked_dense_weight(), dense[rows][:, cols])
            if bias:
                assert torch.equal(part.dense_bias(), dense_bias[rows])
            else:
                assert part.bias is None
            if kind == "conv":
                assert (part.stride, part.padding, part.dilation) == (layer.stride, layer.padding, layer.dilation)
            part.weight.data.add_(1.0)  # a copy: the layer's own weights stay
    torch.testing.assert_close(layer.masked_dense_weight(), dense, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_narrow_groups_computes_the_layers_outputs(kind):
    layer = _layer(kind, (3, 0, 5, 2), (4, 2, 0, 3), True).eval()
    x = torch.randn(2, 10) if kind == "linear" else torch.randn(2, 10, 6, 6)
    full = layer(x)
    part = layer.narrow_groups(1, 4)
    inputs, outputs = layer.group_slice(1, 4)
    torch.testing.assert_close(part(x[:, layer.in_index[inputs]]), full[:, layer.out_index[outputs]])


@pytest.mark.parametrize("lo, hi, error", [(2, 2, ValueError), (-1, 1, ValueError), (0, 5, ValueError),
                                           (3, 1, ValueError), (0.0, 1, TypeError)])
def test_narrow_groups_bad_range(lo, hi, error):
    layer = _layer("linear", (3, 0, 5, 2), (4, 2, 0, 3), True)
    with pytest.raises(error):
        layer.narrow_groups(lo, hi)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_from_dense_with_an_order_keeps_that_order(kind):
    torch.manual_seed(1)
    dense = torch.nn.Linear(6, 5) if kind == "linear" else torch.nn.Conv2d(6, 5, 3, padding=1)
    in_ids, out_ids = torch.tensor([1, 0, 1, 0, 1, 1]), torch.tensor([0, 1, 1, 0, 1])
    in_order, out_order = torch.tensor([3, 1, 5, 0, 2, 4]), torch.tensor([3, 0, 4, 2, 1])
    cls = SplitLinear if kind == "linear" else SplitConv2d
    plain = cls.from_dense(dense, in_ids, out_ids)
    ordered = cls.from_dense(dense, in_ids, out_ids, in_order=in_order, out_order=out_order)
    assert torch.equal(ordered.in_index, in_order) and torch.equal(ordered.out_index, out_order)
    torch.testing.assert_close(ordered.masked_dense_weight(), plain.masked_dense_weight(), rtol=0, atol=0)
    grouped = cls.from_dense(dense, in_ids, out_ids, in_order=in_order, out_order=out_order, grouped_input=True,
                             grouped_output=True)
    assert grouped.grouped_input and grouped.grouped_output
    assert torch.equal(grouped.weight, ordered.weight) and torch.equal(grouped.bias, ordered.bias)
    with pytest.raises(ValueError, match="group by group"):
        cls.from_dense(dense, in_ids, out_ids, in_order=torch.arange(6))
