import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import splitkern
from splitkern.layout import block_layout
from splitkern.ops import grouped_conv
from tests.helpers import (DEVICE, assert_all_close, assert_close, assert_compiled_matches_eager, assert_error_names,
                           assert_within_twice_torch_error, call_with_overrides, draw_group_sizes, fast_backends,
                           forward_and_grads, opcheck_under, random_permutation, to_original_order)

FAST = fast_backends("grouped_conv")

LAYOUTS = {
    "equal": ((4, 4, 4), (4, 4, 4)),
    "ragged": ((3, 9, 5), (6, 2, 7)),
    "empty_in": ((5, 0, 3), (4, 3, 2)),
    "empty_out": ((5, 2, 3), (4, 0, 2)),
    "size1": ((1, 1), (1, 1)),
    "single_group": ((5,), (3,)),
}
# (kernel_size, stride, padding, dilation)
GEOMETRIES = {
    "1x1": (1, 1, 0, 1),
    "3x3": (3, 1, 1, 1),
    "3x3_stride2": (3, 2, 1, 1),
    "3x3_dilation2": (3, 1, 2, 2),
    "5x5_stride2_pad0": (5, 2, 0, 1),
    "3x1_mixed": ((3, 1), (2, 1), (1, 0), (1, 1)),
}


def make_case(in_sizes, out_sizes, geometry, batch=2, hw=(7, 9), *, channels_last=False, indices=False,
              bias=True, dtype=torch.float32):
    layout = block_layout(in_sizes, out_sizes)
    ks, stride, padding, dilation = geometry
    kh, kw = (ks, ks) if isinstance(ks, int) else ks
    x = torch.randn(batch, layout.in_features, *hw, device=DEVICE, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(layout.weight_numel * kh * kw, device=DEVICE, dtype=dtype)
    b = torch.randn(layout.out_features, device=DEVICE, dtype=dtype) if bias else None
    ii = random_permutation(layout.in_features) if indices else None
    oi = random_permutation(layout.out_features) if indices else None
    conv = dict(kernel_size=ks, stride=stride, padding=padding, dilation=dilation)
    return layout, x, w, b, ii, oi, conv


def run(backend_name, x, w, b, layout, ii, oi, conv):
    with splitkern.use_backend(backend_name):
        return grouped_conv(x, w, b, in_sizes=layout.in_sizes, out_sizes=layout.out_sizes, in_index=ii,
                            out_index=oi, **conv)


def masked_dense_conv(x, w, b, layout, ii, oi, conv):
    """The semantics, written independently: dense F.conv2d with a block channel mask."""
    ks = conv["kernel_size"]
    kh, kw = (ks, ks) if isinstance(ks, int) else ks
    dense = torch.zeros(layout.out_features, layout.in_features, kh, kw, dtype=w.dtype, device=w.device)
    offset = 0
    for g in range(layout.groups):
        n, k = layout.out_sizes[g], layout.in_sizes[g]
        block = w[offset:offset + n * k * kh * kw].view(n, k, kh, kw)
        offset += n * k * kh * kw
        dense[layout.out_offsets[g]:layout.out_offsets[g] + n, layout.in_offsets[g]:layout.in_offsets[g] + k] = block
    dense, bias = to_original_order(dense, b, ii, oi)
    geometry = dict(stride=conv["stride"], padding=conv["padding"], dilation=conv["dilation"])
    if dense.numel() == 0:  # F.conv2d mishandles zero channels: the output is the bias alone
        shape = F.conv2d(x.new_zeros(x.shape[0], 1, *x.shape[2:]), dense.new_zeros(1, 1, kh, kw), **geometry).shape
        y = x.new_zeros(shape[0], layout.out_features, *shape[2:]) + 0 * x.sum()
        return y if bias is None else y + bias.view(1, -1, 1, 1)
    return F.conv2d(x, dense, bias, **geometry)


def oracle(x, w, b, layout, ii, oi, conv, grad_out=None):
    """Masked dense conv output, the grad_out used, and its gradients for (x, w, b)."""
    expected = masked_dense_conv(x, w, b, layout, ii, oi, conv)
    grad_out = torch.randn_like(expected) if grad_out is None else grad_out
    _, grads = forward_and_grads(lambda x_, w_, b_: masked_dense_conv(x_, w_, b_, layout, ii, oi, conv), (x, w, b),
                                 grad_out)
    return expected, grad_out, grads


def grads_for(backend_name, x, w, b, layout, ii, oi, conv, grad_out):
    return forward_and_grads(lambda x_, w_, b_: run(backend_name, x_, w_, b_, layout, ii, oi, conv), (x, w, b),
                             grad_out)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("indices", [False, True])
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("name", LAYOUTS)
def test_reference_equals_masked_dense_conv(name, geometry, indices, channels_last):
    case = make_case(*LAYOUTS[name], GEOMETRIES[geometry], channels_last=channels_last, indices=indices)
    layout, x, w, b, ii, oi, conv = case
    expected, grad_out, expected_grads = oracle(x, w, b, layout, ii, oi, conv)
    y, grads = grads_for("reference", x, w, b, layout, ii, oi, conv, grad_out)
    assert_close(y, expected)
    assert_all_close(grads, expected_grads)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("backend_name", FAST)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("indices", [False, True])
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("name", LAYOUTS)
def test_backend_matches_reference(backend_name, name, geometry, indices, channels_last):
    layout, x, w, b, ii, oi, conv = make_case(*LAYOUTS[name], GEOMETRIES[geometry], channels_last=channels_last,
                                              indices=indices)
    grad_out = torch.randn_like(run("reference", x, w, b, layout, ii, oi, conv))
    y_ref, g_ref = grads_for("reference", x, w, b, layout, ii, oi, conv, grad_out)
    y, g = grads_for(backend_name, x, w, b, layout, ii, oi, conv, grad_out)
    assert_close(y, y_ref)
    assert y.stride() == y_ref.stride()
    for actual, expected in zip(g, g_ref):
        assert_close(actual, expected)
        assert actual.stride() == expected.stride()


@pytest.mark.parametrize("backend_name", ["reference", *FAST])
@pytest.mark.parametrize("batch, hw", [(0, (5, 5)), (1, (1, 1)), (1, (6, 5)), (3, (4, 7))])
def test_batch_and_spatial_edge_cases(backend_name, batch, hw):
    geometry = GEOMETRIES["3x3"] if min(hw) > 1 else GEOMETRIES["1x1"]
    layout, x, w, b, ii, oi, conv = make_case(*LAYOUTS["ragged"], geometry, batch=batch, hw=hw, indices=True)
    expected, grad_out, expected_grads = oracle(x, w, b, layout, ii, oi, conv)
    y, grads = grads_for(backend_name, x, w, b, layout, ii, oi, conv, grad_out)
    assert y.shape == expected.shape
    assert_close(y, expected)
    assert_all_close(grads, expected_grads)


@pytest.mark.parametrize("backend_name", FAST)
def test_larger_channels_span_several_tiles(backend_name):
    """Channel counts above the 64-wide tiles and a reduction longer than one chunk."""
    layout, x, w, b, ii, oi, conv = make_case((70, 3), (66, 5), GEOMETRIES["3x3"], batch=1, hw=(5, 4),
                                              indices=True)
    grad_out = torch.randn_like(run("reference", x, w, b, layout, ii, oi, conv))
    y_ref, g_ref = grads_for("reference", x, w, b, layout, ii, oi, conv, grad_out)
    y, g = grads_for(backend_name, x, w, b, layout, ii, oi, conv, grad_out)
    assert_close(y, y_ref)
    assert_all_close(g, g_ref)


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_fuzz_random_layouts_and_geometry(data):
    in_sizes, out_sizes = draw_group_sizes(data, max_groups=4, max_size=6)
    kh, kw = data.draw(st.integers(1, 3), label="kh"), data.draw(st.integers(1, 3), label="kw")
    stride = (data.draw(st.integers(1, 2), label="sh"), data.draw(st.integers(1, 2), label="sw"))
    padding = (data.draw(st.integers(0, 2), label="ph"), data.draw(st.integers(0, 2), label="pw"))
    dilation = (data.draw(st.integers(1, 2), label="dh"), data.draw(st.integers(1, 2), label="dw"))
    hw = (data.draw(st.integers(dilation[0] * (kh - 1) + 1, 7), label="h"),
          data.draw(st.integers(dilation[1] * (kw - 1) + 1, 7), label="w"))
    batch = data.draw(st.integers(0, 2), label="batch")
    channels_last = data.draw(st.booleans(), label="channels_last")
    indices = data.draw(st.booleans(), label="indices")
    geometry = ((kh, kw), stride, padding, dilation)
    layout, x, w, b, ii, oi, conv = make_case(in_sizes, out_sizes, geometry, batch=batch, hw=hw,
                                              channels_last=channels_last, indices=indices)
    expected, grad_out, expected_grads = oracle(x, w, b, layout, ii, oi, conv)
    for name in ["reference", *FAST]:
        y, grads = grads_for(name, x, w, b, layout, ii, oi, conv, grad_out)
        assert_close(y, expected)
        assert_all_close(grads, expected_grads)


def test_gradcheck_float64_reference():
    layout, x, w, b, ii, oi, conv = make_case((2, 0, 3), (2, 2, 1), GEOMETRIES["3x3_stride2"], batch=1, hw=(5, 4),
                                              indices=True, dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda *t: run("reference", *t, layout, ii, oi, conv), inputs)


@pytest.mark.parametrize("backend_name", ["reference", *FAST])
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck(backend_name, channels_last):
    layout, x, w, b, ii, oi, conv = make_case((3, 0, 4), (2, 3, 2), GEOMETRIES["3x3_stride2"],
                                              channels_last=channels_last, indices=True)
    geometry = [list(layout.in_sizes), list(layout.out_sizes), [3, 3], [2, 2], [1, 1], [1, 1]]
    y = run("reference", x, w, b, layout, ii, oi, conv)
    grad_out = torch.randn_like(y)
    cases = [
        (torch.ops.splitkern.grouped_conv.default,
         (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), *geometry, ii, oi)),
        (torch.ops.splitkern.grouped_conv_grad_input.default, (grad_out, w.detach(), x.detach(), *geometry, ii, oi)),
        (torch.ops.splitkern.grouped_conv_grad_weight.default, (grad_out, x.detach(), w.detach(), *geometry, ii, oi)),
    ]
    opcheck_under(backend_name, cases)


@pytest.mark.parametrize("backend_name", ["reference", *FAST])
def test_torch_compile_fullgraph(backend_name):
    torch._dynamo.reset()
    conv = torch.nn.Conv2d(6, 5, 3, padding=1).to(DEVICE)
    layer = splitkern.nn.SplitConv2d.from_dense(conv, torch.tensor([0, 1, 1, 2, 0, 2]),
                                                torch.tensor([2, 0, 1, 1, 0]))
    model = torch.nn.Sequential(layer, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    x = torch.randn(2, 6, 5, 5, device=DEVICE)
    with splitkern.use_backend(backend_name):
        assert_compiled_matches_eager(model, layer, x)


class TestBadInput:
    layout, x, w, b, ii, oi, conv = make_case((3, 5), (4, 2), GEOMETRIES["3x3"], indices=True)

    def call(self, **overrides):
        return call_with_overrides(grouped_conv, overrides, self.x, self.w, self.b, in_sizes=self.layout.in_sizes,
                                   out_sizes=self.layout.out_sizes, in_index=self.ii, out_index=self.oi, **self.conv)

    @pytest.mark.parametrize("overrides, error, name", [
        (dict(x="image"), TypeError, "x"),
        (dict(x=torch.randn(2, 8, 7)), ValueError, "x must be 4-D"),
        (dict(x=torch.randn(2, 9, 7, 7)), ValueError, "channels"),
        (dict(x=torch.randn(2, 8, 2, 7), padding=0), ValueError, "spatial size"),
        (dict(weight=torch.randn(10)), ValueError, "weight"),
        (dict(weight=torch.randn(26 * 9, dtype=torch.float64)), TypeError, "weight"),
        (dict(bias=torch.randn(7)), ValueError, "bias"),
        (dict(kernel_size=0), ValueError, "kernel_size"),
        (dict(kernel_size=(3, 3, 3)), TypeError, "kernel_size"),
        (dict(kernel_size=2.5), TypeError, "kernel_size"),
        (dict(stride=0), ValueError, "stride"),
        (dict(padding=-1), ValueError, "padding"),
        (dict(padding="same"), TypeError, "padding"),
        (dict(dilation=(1, 0)), ValueError, "dilation"),
        (dict(in_sizes=(3, 5, 0)), ValueError, "in_sizes and out_sizes"),
        (dict(out_sizes=(4, -2)), ValueError, "out_sizes"),
        (dict(in_index=torch.arange(8, dtype=torch.int32)), TypeError, "in_index"),
        (dict(out_index=torch.zeros(6, dtype=torch.int64)), ValueError, "out_index"),
    ])
    def test_errors_name_the_argument(self, overrides, error, name):
        assert_error_names(error, name, self.call, **overrides)

    def test_device_mismatch(self):
        with pytest.raises(ValueError, match="weight"):
            self.call(x=self.x.to("meta"), in_index=None, out_index=None)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("geometry", ["3x3", "3x3_stride2", "1x1"])
def test_low_precision_within_twice_torch_error(geometry, channels_last, dtype):
    layout, x, w, b, ii, oi, conv = make_case((24, 40, 64), (32, 48, 48), GEOMETRIES[geometry], batch=4,
                                              hw=(16, 16), channels_last=channels_last, indices=True)
    y32 = run("reference", x, w, b, layout, ii, oi, conv)
    grad_out = torch.randn_like(y32)
    y32, g32 = grads_for("reference", x, w, b, layout, ii, oi, conv, grad_out)
    lo = [t.to(dtype) for t in (x, w, b)]
    y_torch, g_torch = grads_for("reference", *lo, layout, ii, oi, conv, grad_out.to(dtype))
    for name in FAST:
        y, g = grads_for(name, *lo, layout, ii, oi, conv, grad_out.to(dtype))
        assert_within_twice_torch_error(y, y_torch, y32)
        for a, t, e in zip(g, g_torch, g32):
            assert_within_twice_torch_error(a, t, e)
