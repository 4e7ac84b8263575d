import pytest
import torch
import torch.nn.functional as F
from torch import nn

import splitkern
from splitkern.nn import SplitLinear
from tests.helpers import DEVICE, assert_error_names, fast_backends, reload_state_dict

BACKENDS = ["reference", *fast_backends("block_diag_mm")]


def dense_and_ids(in_features=19, out_features=13, groups=4, *, empty_in=None, empty_out=None):
    linear = nn.Linear(in_features, out_features).to(DEVICE)
    in_ids = torch.randint(0, groups, (in_features,))
    out_ids = torch.randint(0, groups, (out_features,))
    if empty_in is not None:
        in_ids[in_ids == empty_in] = (empty_in + 1) % groups
    if empty_out is not None:
        out_ids[out_ids == empty_out] = (empty_out + 1) % groups
    return linear, in_ids, out_ids


def masked_linear(linear, in_ids, out_ids):
    mask = (out_ids[:, None] == in_ids[None, :]).to(DEVICE, linear.weight.dtype)
    return lambda x: F.linear(x, linear.weight * mask, linear.bias)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("empty", [None, "in", "out"])
def test_from_dense_equals_masked_linear(backend_name, empty):
    linear, in_ids, out_ids = dense_and_ids(empty_in=1 if empty == "in" else None,
                                            empty_out=2 if empty == "out" else None)
    split = SplitLinear.from_dense(linear, in_ids, out_ids, num_groups=4)
    x = torch.randn(3, 5, 19, device=DEVICE)
    with splitkern.use_backend(backend_name):
        y = split(x)
    torch.testing.assert_close(y, masked_linear(linear, in_ids, out_ids)(x), rtol=1e-4, atol=1e-5)
    assert y.shape == (3, 5, 13)


def test_group_sizes_follow_ids_and_empty_group_outputs_bias():
    linear = nn.Linear(6, 4).to(DEVICE)
    in_ids = torch.tensor([0, 0, 2, 2, 2, 0])  # group 1 has no inputs
    out_ids = torch.tensor([1, 0, 2, 1])
    split = SplitLinear.from_dense(linear, in_ids, out_ids)
    assert split.in_sizes == (3, 0, 3) and split.out_sizes == (1, 2, 1)
    x = torch.randn(2, 6, device=DEVICE)
    y = split(x)
    torch.testing.assert_close(y[:, [0, 3]], linear.bias[[0, 3]].expand(2, 2))


def test_to_dense_roundtrip_and_mask():
    linear, in_ids, out_ids = dense_and_ids()
    split = SplitLinear.from_dense(linear, in_ids, out_ids)
    dense = split.to_dense()
    mask = out_ids[:, None] == in_ids[None, :]
    torch.testing.assert_close(dense.weight, linear.weight * mask.to(DEVICE))
    torch.testing.assert_close(dense.bias, linear.bias)
    again = SplitLinear.from_dense(dense, in_ids, out_ids)
    torch.testing.assert_close(again.weight, split.weight)


def test_forward_grouped_chains_without_permutation():
    first = SplitLinear((4, 6), (5, 3)).to(DEVICE)
    second = SplitLinear((5, 3), (2, 7)).to(DEVICE)
    x = torch.randn(8, 10, device=DEVICE)
    y = second.forward_grouped(first.forward_grouped(x))
    hidden = torch.cat([x[:, :4] @ first.block(0).t(), x[:, 4:] @ first.block(1).t()], 1) + first.bias
    expected = torch.cat([hidden[:, :5] @ second.block(0).t(), hidden[:, 5:] @ second.block(1).t()], 1)
    torch.testing.assert_close(y, expected + second.bias, rtol=1e-4, atol=1e-5)


def test_state_dict_roundtrip():
    linear, in_ids, out_ids = dense_and_ids()
    split = SplitLinear.from_dense(linear, in_ids, out_ids, num_groups=4)
    fresh = reload_state_dict(split, SplitLinear(split.in_sizes, split.out_sizes).to(DEVICE))
    x = torch.randn(4, 19, device=DEVICE)
    torch.testing.assert_close(fresh(x), split(x))


def test_state_dict_with_bad_index_is_rejected():
    split = SplitLinear((2, 2), (1, 1))
    state = split.state_dict()
    state["in_index"] = torch.tensor([0, 0, 1, 2])
    with pytest.raises(ValueError, match="in_index"):
        split.load_state_dict(state)


def test_training_updates_only_block_weights():
    linear, in_ids, out_ids = dense_and_ids()
    split = SplitLinear.from_dense(linear, in_ids, out_ids)
    opt = torch.optim.SGD(split.parameters(), lr=0.1)
    x, target = torch.randn(16, 19, device=DEVICE), torch.randn(16, 13, device=DEVICE)
    loss = F.mse_loss(split(x), target)
    loss.backward()
    opt.step()
    dense = split.to_dense()
    mask = (out_ids[:, None] == in_ids[None, :]).to(DEVICE)
    assert torch.all(dense.weight[~mask] == 0)
    assert not torch.allclose(dense.weight[mask], linear.weight[mask])


def test_extra_repr_shows_sizes_and_reduction():
    text = repr(SplitLinear((3, 1), (2, 4)))
    assert "in_sizes=[3, 1]" in text and "out_sizes=[2, 4]" in text
    assert "weights=10 (41.7% of dense 24)" in text


def test_init_like_nn_linear_per_block():
    layer = SplitLinear((400, 100), (300, 50))
    assert layer.block(0).abs().max() <= 1 / 400 ** 0.5
    assert layer.block(1).abs().max() > 1 / 400 ** 0.5  # bound follows the block's own fan-in


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(linear=nn.Conv2d(3, 3, 1)), TypeError, "linear"),
    (dict(in_groups=[0] * 19), TypeError, "in_groups"),
    (dict(in_groups=torch.zeros(19)), TypeError, "in_groups"),
    (dict(in_groups=torch.zeros(18, dtype=torch.long)), ValueError, "in_groups"),
    (dict(out_groups=torch.full((13,), -1)), ValueError, "group ids"),
    (dict(out_groups=torch.full((13,), 4), num_groups=4), ValueError, "out_groups"),
    (dict(num_groups=0), ValueError, "num_groups"),
])
def test_from_dense_bad_input(kwargs, error, name):
    linear, in_ids, out_ids = dense_and_ids()
    defaults = dict(linear=linear, in_groups=in_ids, out_groups=out_ids)
    assert_error_names(error, name, SplitLinear.from_dense, **(defaults | kwargs))


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(in_sizes=(2, 2), out_sizes=(1,)), ValueError, "in_sizes and out_sizes"),
    (dict(in_sizes=(2, -2), out_sizes=(1, 1)), ValueError, "in_sizes"),
    (dict(in_sizes=(2, 2), out_sizes=(1, 1), in_index=torch.tensor([0, 1, 1, 2])), ValueError, "in_index"),
])
def test_constructor_bad_input(kwargs, error, name):
    assert_error_names(error, name, SplitLinear, **kwargs)
