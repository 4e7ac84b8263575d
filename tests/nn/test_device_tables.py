"""A split layer builds every device table its kernels read when it is built or moved, so no forward or
backward copies a table host -> device (that copy blocks, and breaks CUDA graph capture)."""

import pytest
import torch

import splitkern
from splitkern.layout import BlockLayout
from splitkern.nn import SplitConv2d, SplitLinear
from tests.helpers import DEVICE, random_permutation

_NO_TRITON = splitkern.backend.unsupported_reason("triton", "block_diag_mm", DEVICE, torch.float32)
pytestmark = pytest.mark.skipif(bool(_NO_TRITON), reason=f"needs the triton backend: {_NO_TRITON}")


@pytest.fixture
def no_table_built_in_calls(monkeypatch):
    """Fail if a kernel launch asks for a table the layout does not hold yet."""
    original = BlockLayout._cached

    def cached_only(self, key, build):
        assert key in self._device_tables, f"device table {key} built during a call"
        return original(self, key, build)

    def arm():
        monkeypatch.setattr(BlockLayout, "_cached", cached_only)
    return arm


def layers():  # sizes used nowhere else, so the shared layouts start without tables
    linear = SplitLinear((5, 11, 0, 7), (9, 3, 4, 6), in_index=random_permutation(23),
                         out_index=random_permutation(22), device=DEVICE)
    conv = SplitConv2d((3, 13), (10, 5), 3, padding=1, device=DEVICE)
    return [(linear, lambda m: torch.randn(m, 23, device=DEVICE)),
            (conv, lambda m: torch.randn(m, 16, 5, 6, device=DEVICE))]


@pytest.mark.parametrize("rows", [1, 17, 70])
def test_forward_and_backward_read_only_prebuilt_tables(rows, no_table_built_in_calls):
    built = layers()
    no_table_built_in_calls()
    with splitkern.use_backend("triton"):
        for layer, make_input in built:
            x = make_input(rows).requires_grad_(True)
            layer(x).square().sum().backward()
            assert x.grad is not None and layer.weight.grad is not None


def test_to_and_load_state_dict_rebuild_the_tables(no_table_built_in_calls):
    (linear, make_input), _ = layers()
    linear.layout._device_tables.clear()
    linear.to(DEVICE)  # a move (here to the same device) builds them again
    assert linear.layout._device_tables
    linear.layout._device_tables.clear()
    linear.load_state_dict({k: v.clone() for k, v in linear.state_dict().items()}, assign=True)
    no_table_built_in_calls()
    with splitkern.use_backend("triton"):
        linear(make_input(3)).sum().backward()
