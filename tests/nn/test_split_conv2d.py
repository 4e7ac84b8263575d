import pytest
import torch
import torch.nn.functional as F
from torch import nn

import splitkern
from splitkern.nn import SplitConv2d
from tests.helpers import DEVICE, assert_close, assert_error_names, fast_backends, reload_state_dict

BACKENDS = ["reference", *fast_backends("grouped_conv")]


def dense_and_ids(cin=10, cout=7, groups=3, **conv_kwargs):
    conv = nn.Conv2d(cin, cout, **{"kernel_size": 3, "padding": 1, **conv_kwargs}).to(DEVICE)
    return conv, torch.randint(0, groups, (cin,)), torch.randint(0, groups, (cout,))


def masked_conv(conv, in_ids, out_ids):
    mask = (out_ids[:, None] == in_ids[None, :]).to(DEVICE, conv.weight.dtype)[:, :, None, None]
    return lambda x: F.conv2d(x, conv.weight * mask, conv.bias, conv.stride, conv.padding, conv.dilation)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("conv_kwargs", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, padding=1, bias=False),
    dict(kernel_size=5, padding="same", dilation=1),
    dict(kernel_size=3, padding="valid", dilation=2),
    dict(kernel_size=1, padding=0),
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_from_dense_equals_masked_conv(backend_name, conv_kwargs, channels_last):
    conv, in_ids, out_ids = dense_and_ids(**conv_kwargs)
    split = SplitConv2d.from_dense(conv, in_ids, out_ids, num_groups=3)
    x = torch.randn(2, 10, 9, 8, device=DEVICE)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    with splitkern.use_backend(backend_name):
        y = split(x)
    assert_close(y, masked_conv(conv, in_ids, out_ids)(x))
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_to_dense_roundtrip():
    conv, in_ids, out_ids = dense_and_ids(stride=2, dilation=1)
    split = SplitConv2d.from_dense(conv, in_ids, out_ids)
    dense = split.to_dense()
    mask = (out_ids[:, None] == in_ids[None, :]).to(DEVICE)[:, :, None, None]
    assert_close(dense.weight, conv.weight * mask)
    assert (dense.stride, dense.padding, dense.dilation) == (conv.stride, conv.padding, conv.dilation)
    x = torch.randn(1, 10, 6, 6, device=DEVICE)
    assert_close(dense(x), split(x))


def test_unequal_and_empty_groups_sizes():
    conv = nn.Conv2d(4, 3, 3).to(DEVICE)
    split = SplitConv2d.from_dense(conv, torch.tensor([0, 0, 2, 0]), torch.tensor([1, 2, 2]))
    assert split.in_sizes == (3, 0, 1) and split.out_sizes == (0, 1, 2)
    assert split.in_channels == 4 and split.out_channels == 3
    x = torch.randn(2, 4, 5, 5, device=DEVICE)
    assert_close(split(x)[:, 0], conv.bias[0].expand(2, 3, 3))  # its group has no inputs


def test_state_dict_roundtrip():
    conv, in_ids, out_ids = dense_and_ids()
    split = SplitConv2d.from_dense(conv, in_ids, out_ids, num_groups=3)
    fresh = reload_state_dict(split, SplitConv2d(split.in_sizes, split.out_sizes, 3, padding=1).to(DEVICE))
    x = torch.randn(2, 10, 5, 5, device=DEVICE)
    assert_close(fresh(x), split(x))


def test_forward_grouped_equals_groups_conv_for_equal_sizes():
    layer = SplitConv2d((4, 4), (6, 6), 3, padding=1).to(DEVICE)
    x = torch.randn(2, 8, 5, 5, device=DEVICE)
    expected = F.conv2d(x, layer.weight.view(12, 4, 3, 3), layer.bias, padding=1, groups=2)
    assert_close(layer.forward_grouped(x), expected)


def test_extra_repr():
    text = repr(SplitConv2d((2, 2), (3, 1), 3, stride=2))
    assert "kernel_size=(3, 3)" in text and "stride=(2, 2)" in text
    assert "weights=72 (50.0% of dense 144)" in text  # (2*3 + 2*1) * 9 of 4*4*9


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(conv=nn.Linear(3, 3)), TypeError, "conv"),
    (dict(conv=nn.Conv2d(10, 7, 3, groups=1, padding_mode="reflect")), ValueError, "padding_mode"),
    (dict(conv=nn.Conv2d(10, 14, 3, groups=2), out_groups=torch.zeros(14, dtype=torch.long)), ValueError, "groups"),
    (dict(conv=nn.Conv2d(10, 7, 4, padding="same")), ValueError, "same"),
    (dict(in_groups=torch.zeros(9, dtype=torch.long)), ValueError, "in_groups"),
    (dict(out_groups=torch.zeros(7)), TypeError, "out_groups"),
])
def test_from_dense_bad_input(kwargs, error, name):
    conv, in_ids, out_ids = dense_and_ids()
    defaults = dict(conv=conv, in_groups=in_ids, out_groups=out_ids)
    assert_error_names(error, name, SplitConv2d.from_dense, **(defaults | kwargs))


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(kernel_size=0), ValueError, "kernel_size"),
    (dict(kernel_size=3, stride=(1, 0)), ValueError, "stride"),
    (dict(kernel_size=3, padding=-1), ValueError, "padding"),
])
def test_constructor_bad_input(kwargs, error, name):
    assert_error_names(error, name, SplitConv2d, (2, 2), (2, 2), **kwargs)
