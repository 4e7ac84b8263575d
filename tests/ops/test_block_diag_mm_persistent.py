"""The persistent launch of block_diag_mm (a few programs walking every (row tile, column tile) work
item in GROUP_M bands) computes what the one-program-per-tile launch and the masked dense layer do."""

import dataclasses

import pytest
import torch

from splitkern import backend
from splitkern.triton import block_diag_mm as tk
from tests.helpers import DEVICE, assert_close
from tests.ops.test_block_diag_mm import LAYOUTS, forward_and_grads, make_case, masked_dense_linear

pytestmark = pytest.mark.skipif(bool(backend.unsupported_reason("triton", "block_diag_mm", DEVICE, torch.float32)),
                                reason="needs the triton backend (a GPU or TRITON_INTERPRET=1)")


@pytest.fixture
def persistent(monkeypatch):
    """Every forward/input-gradient config made persistent: 3 programs per SM (3 in all under the
    interpreter, so each walks several items), bands of 2 row tiles (partial bands included)."""
    tables = {cls: {bucket: dataclasses.replace(cfg, persistent=3, group_m=2) for bucket, cfg in table.items()}
              for cls, table in tk.FORWARD_CONFIGS.items()}
    monkeypatch.setattr(tk, "FORWARD_CONFIGS", tables)
    assert tk.mm_kernel(tk.pick_config(70, torch.float32, False)) is tk.grouped_mm_persistent_kernel


@pytest.mark.parametrize("m", [1, 17, 70])
@pytest.mark.parametrize("name", ["equal", "ragged", "empty_in", "empty_out", "odd_multi_tile"])
def test_persistent_launch_matches_masked_dense(name, m, persistent):
    layout, x, w, b, ii, oi = make_case(*LAYOUTS[name], m, indices=name != "equal")
    grad_out = torch.randn(m, layout.out_features, device=DEVICE)
    expected, expected_grads = forward_and_grads("reference", x, w, b, layout, ii, oi, grad_out)
    assert_close(expected, masked_dense_linear(x, w, b, layout, ii, oi))
    out, grads = forward_and_grads("triton", x, w, b, layout, ii, oi, grad_out)
    assert_close(out, expected)
    for got, want in zip(grads, expected_grads):
        assert_close(got, want)


def test_persistent_order_visits_every_work_item_once():
    """The band order of the kernel, replayed in Python: a permutation of all (row, column) items."""
    for row_tiles, tiles, group_m in ((5, 3, 2), (1, 4, 8), (7, 1, 3), (8, 8, 8)):
        band_items = group_m * tiles
        seen = []
        for item in range(row_tiles * tiles):
            band = item // band_items
            band_rows = min(row_tiles - band * group_m, group_m)
            local = item - band * band_items
            seen.append((band * group_m + local % band_rows, local // band_rows))
        assert sorted(seen) == [(r, t) for r in range(row_tiles) for t in range(tiles)]
