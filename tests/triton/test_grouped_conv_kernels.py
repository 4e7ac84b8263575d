"""The Triton grouped conv's own machinery: the taps-outer weight packing, tile widths chosen by group width,
the split pixel reduction of the weight gradient and the weight an inference plan prepares once. Every
kernel result is checked against the masked dense conv (interpreter on CPU)."""

import pytest
import torch

import splitkern
from splitkern import backend
from splitkern.layout import block_layout
from splitkern.nn import SplitConv2d
from splitkern.triton import grouped_conv as tc
from tests.helpers import DEVICE, assert_close, forward_and_grads
from tests.ops.test_grouped_conv import make_case, masked_dense_conv

LAYOUTS = {"equal": ((4, 4, 4), (4, 4, 4)), "ragged": ((3, 9, 5), (6, 2, 7)), "empty": ((5, 0, 3), (4, 3, 0)),
           "odd": ((1, 7), (5, 1))}


@pytest.mark.parametrize("order, dims", [("forward", (2, 1, 0)), ("grad_input", (2, 0, 1))])
@pytest.mark.parametrize("name", LAYOUTS)
def test_taps_outer_packs_each_group_with_its_taps_outermost(name, order, dims):
    layout = block_layout(*LAYOUTS[name])
    taps = 6  # a 2x3 kernel
    weight = torch.randn(layout.weight_numel * taps, device=DEVICE)
    packed = tc.taps_outer(weight, layout, taps, order)
    expected = torch.cat([layout.block(weight, g, (taps,)).permute(dims).reshape(-1) for g in range(layout.groups)])
    assert torch.equal(packed, expected)


def test_tap_permutation_rejects_an_unknown_order():
    with pytest.raises(ValueError, match="order"):
        block_layout((2,), (2,)).tap_permutation(torch.device("cpu"), 9, "backward")


@pytest.mark.parametrize("sizes, over, block_n, block_k", [
    (((32,) * 4, (32,) * 4), "out", 32, 32),  # 32-channel groups: no half-empty 64-wide tile
    (((8, 8), (16, 16)), "out", 16, 16),  # 16 is tl.dot's least
    (((128, 128), (128, 128)), "out", 64, 32),  # wide groups keep the table's tile
    (((16, 16), (64, 64)), "in", 16, 32),  # the input gradient tiles the input channels, reduces the output's
])
def test_tiles_narrow_to_the_widest_group(sizes, over, block_n, block_k):
    cfg = tc.conv_config(torch.bfloat16, block_layout(*sizes), over)
    assert (cfg.block_n, cfg.block_k) == (block_n, block_k)
    table = tc.conv_config(torch.bfloat16)
    assert (cfg.block_m, cfg.num_warps, cfg.num_stages) == (table.block_m, table.num_warps, table.num_stages)
    assert cfg.block_n in tc.tile_widths(table.block_n)  # its column tiles are among the ones prepare_layout builds


def test_weight_gradient_tiles_narrow_their_columns_to_the_widest_input_group():
    cfg = tc.conv_weight_grad_config(torch.bfloat16, block_layout((16,) * 4, (32,) * 4))
    table = tc.conv_weight_grad_config(torch.bfloat16)
    assert (cfg.block_n, cfg.block_k) == (table.block_n, 16)  # rows are wgmma's M: 64 on Hopper


@pytest.mark.parametrize("programs, pixel_blocks, sms, splits", [
    (72, 512, 132, 4),  # WRN 256 channels, 4 groups, batch 128: 72 programs on 132 SMs -> 288
    (300, 512, 132, 1),  # already two waves
    (72, 8, 132, 2),  # each split keeps 4 pixel blocks at least
    (72, 3, 132, 1),
    (72, 512, 0, 1),  # off CUDA
])
def test_weight_gradient_splits_fill_the_gpu(programs, pixel_blocks, sms, splits):
    assert tc.weight_grad_splits(torch.device("cpu"), programs, pixel_blocks, sms) == splits


@pytest.mark.parametrize("splits", [2, 3])
@pytest.mark.parametrize("name", LAYOUTS)
def test_split_weight_gradient_matches_masked_dense(monkeypatch, name, splits):
    monkeypatch.setattr(tc, "weight_grad_splits", lambda *args: splits)
    layout, x, w, b, ii, oi, conv = make_case(*LAYOUTS[name], (3, 2, 1, 1), batch=3, hw=(9, 7), channels_last=True,
                                              indices=True)
    grad_out = torch.randn_like(masked_dense_conv(x, w, b, layout, ii, oi, conv))
    _, expected = forward_and_grads(lambda w_: masked_dense_conv(x, w_, b, layout, ii, oi, conv), (w,), grad_out)
    got = tc.grouped_conv_grad_weight(grad_out, x, w, layout, (3, 3), (2, 2), (1, 1), (1, 1), ii, oi)
    assert_close(got, expected[0])


@pytest.mark.parametrize("name", LAYOUTS)
def test_a_prepared_weight_computes_what_the_packed_one_does(name):
    layout, x, w, b, ii, oi, conv = make_case(*LAYOUTS[name], (3, 1, 1, 1), channels_last=True, indices=True)
    geometry = ((3, 3), (1, 1), (1, 1), (1, 1))
    prepared = tc.prepare_weight(w, layout, (3, 3))
    assert_close(tc.grouped_conv(x, prepared, b, layout, *geometry, ii, oi),
                 masked_dense_conv(x, w, b, layout, ii, oi, conv))


@pytest.mark.skipif("triton" not in backend.available_backends(DEVICE, "grouped_conv", torch.float32),
                    reason="no Triton backend here")
def test_an_inference_plan_packs_the_weight_once(monkeypatch):
    layer = SplitConv2d((4, 12), (8, 8), 3, padding=1).to(DEVICE).eval()
    layer.strategy = "op"
    x = torch.randn(2, 16, 6, 6, device=DEVICE)
    seen = []
    real = tc.grouped_conv

    def spy(x, weight, *args):
        seen.append(weight)
        return real(x, weight, *args)
    monkeypatch.setattr(tc, "grouped_conv", spy)
    with splitkern.use_backend("triton"), torch.no_grad():
        first, second = layer(x), layer(x)
    assert len(seen) == 2 and all(isinstance(w, tc.PreparedConvWeight) for w in seen)
    assert seen[0] is seen[1]  # the plan's, packed when it was built
    layer.strategy = "masked_dense"
    with torch.no_grad():
        assert_close(first, layer(x))
    assert torch.equal(first, second)
