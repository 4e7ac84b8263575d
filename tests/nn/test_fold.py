"""BatchNorm folded into the split layer (or torch conv / linear) before it (splitkern.nn.fold): exact, undone
when it must be."""

import copy
import io
import pickle

import pytest
import torch
from torch import nn

from splitkern.models import wrn
from splitkern.nn import (FoldableBatchNorm2d, FoldingConv2d, FoldingLinear, SplitConv2d, SplitLinear, fold_batchnorm,
                          folded_batchnorms, set_strategy, strategies, unfold_batchnorm)
from splitkern.nn.fold import plain_module
from splitkern.splitnet import split

ATOL = 1e-5


def _randomise_batchnorms(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)


def _split_pair(groups: str = "ragged"):
    """(folded, unfolded) split WRN-16-1 2-2-2 with the same weights and non-trivial BatchNorms."""
    torch.manual_seed(0)
    aware = wrn(16, 1, 10, split="2-2-2")
    for a in aware.assignments.values():
        ids = torch.arange(a.features) % a.groups if groups == "equal" else torch.randint(0, a.groups, (a.features,))
        a.set_hard(ids)
    _randomise_batchnorms(aware)
    return split(aware).eval(), split(aware, fold_batchnorm=False).eval()


@pytest.mark.parametrize("groups, strategy", [("equal", "auto"), ("equal", "grouped"), ("ragged", "auto"),
                                               ("ragged", "op"), ("ragged", "per_group"), ("ragged", "masked_dense")])
def test_folded_model_matches_the_unfolded_one(strategy, groups):
    folded, plain = _split_pair(groups)
    set_strategy(folded, strategy)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = plain(x)
        assert (folded(x) - expected).abs().max() <= ATOL
        assert (folded(x) - expected).abs().max() <= ATOL  # the cached plans too
    links = folded_batchnorms(folded)
    split_links = [name for name in links if name in strategies(folded)]
    assert len(split_links) == 4  # conv1 -> bn2 in the four split blocks
    assert {type(folded.get_submodule(name)) for name in links if name not in split_links} == {FoldingConv2d}
    assert len(links) > 4  # and in the unsplit ones
    assert not folded_batchnorms(plain)
    assert all(plan.folds for name in split_links for plan in folded.get_submodule(name).plans.values())


def test_train_mode_autograd_and_hooks_see_the_batchnorm_run():
    folded, plain = _split_pair()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        folded(x)  # folded plans built
    expected = plain(x)
    out = folded(x)  # autograd records: no fold, the BatchNorm runs and gets its gradient
    assert (out - expected).abs().max() <= ATOL
    out.sum().backward()
    bn = folded.get_submodule(folded_batchnorms(folded)["stages.2.0.conv1"])
    assert bn.bias.grad is not None and bn.bias.grad.abs().sum() > 0
    conv = folded.get_submodule("stages.2.0.conv1")
    seen = {}
    handle = conv.register_forward_hook(lambda m, args, y: seen.setdefault("y", y))
    with torch.no_grad():
        folded(x)
        handle.remove()
        plain_conv = plain.get_submodule("stages.2.0.conv1")
        unfolded = plain_conv(torch.relu(plain.get_submodule("stages.2.0.bn1")(
            plain.stages[1](plain.stages[0](plain.conv1(x))))))
    assert (seen["y"] - unfolded).abs().max() <= ATOL  # the hook saw the conv's own output
    folded.train(), plain.train()
    with torch.no_grad():
        assert (folded(x) - plain(x)).abs().max() <= ATOL  # train mode: batch statistics, no fold
    assert torch.equal(bn.running_mean, plain.get_submodule("stages.2.0.bn2").running_mean)  # the stats moved alike


def test_loads_and_in_place_edits_rebuild_the_folded_weights():
    folded, plain = _split_pair()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        folded(x)
        other = copy.deepcopy(plain)
        _randomise_batchnorms(other, seed=1)
        folded.load_state_dict(other.state_dict())
        assert (folded(x) - other(x)).abs().max() <= ATOL
        for m in (folded, other):
            m.get_submodule("stages.1.1.0.bn2").running_var.mul_(3)
            m.get_submodule("stages.2.1.bn2").weight.add_(0.5)
        assert (folded(x) - other(x)).abs().max() <= ATOL
        unfold_batchnorm(folded)
        assert not folded_batchnorms(folded)
        assert (folded(x) - other(x)).abs().max() <= ATOL


def test_folded_models_pickle_and_copy():
    folded, plain = _split_pair()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        folded(x)
        buffer = io.BytesIO()
        torch.save(folded, buffer)
        buffer.seek(0)
        clones = torch.load(buffer, weights_only=False), copy.deepcopy(folded), pickle.loads(pickle.dumps(folded))
        for clone in clones:
            assert folded_batchnorms(clone) == folded_batchnorms(folded)
            assert (clone(x) - plain(x)).abs().max() <= ATOL


class _Branching(nn.Module):
    def __init__(self, conv, bn):
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y  # the conv's output has a second user: folding would change it


def _conv():
    return SplitConv2d([3, 5], [4, 6], 3, padding=1)


def test_only_sole_consumers_are_folded():
    assert not fold_batchnorm(_Branching(_conv(), nn.BatchNorm2d(10)))
    assert fold_batchnorm(nn.Sequential(_conv(), nn.BatchNorm2d(10))) == {"0": "1"}
    assert not fold_batchnorm(nn.Sequential(_conv(), nn.ReLU(), nn.BatchNorm2d(10)))
    shared = nn.BatchNorm2d(10)
    assert not fold_batchnorm(nn.Sequential(nn.Sequential(_conv(), shared), nn.Sequential(_conv(), shared)))


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_a_standalone_pair_folds_and_matches(kind):
    torch.manual_seed(0)
    if kind == "conv":
        layer, bn, x = _conv(), nn.BatchNorm2d(10), torch.randn(2, 8, 6, 6)
    else:
        layer, bn, x = SplitLinear([3, 0, 5], [4, 2, 0], bias=False), nn.BatchNorm1d(6), torch.randn(5, 8)
    model = nn.Sequential(layer, bn)
    _randomise_batchnorms(model)
    plain = copy.deepcopy(model).eval()
    assert fold_batchnorm(model) == {"0": "1"}
    model.eval()
    with torch.no_grad():
        for strategy in layer.candidates():
            layer.strategy = strategy
            assert (model(x) - plain(x)).abs().max() <= ATOL, strategy


def test_fold_into_checks_its_argument():
    layer = _conv()
    with pytest.raises(TypeError, match="bn must be a FoldableBatchNorm"):
        layer.fold_into(nn.BatchNorm2d(10))
    with pytest.raises(ValueError, match="bn normalises 7 features"):
        layer.fold_into(FoldableBatchNorm2d(7))


def _torch_pair(kind: str):
    """(model, unfolded copy, input) of a torch conv / linear followed by its BatchNorm, statistics randomised."""
    torch.manual_seed(0)
    if kind == "conv":
        model, x = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6)), torch.randn(2, 4, 5, 5)
        model = model.to(memory_format=torch.channels_last)
    else:
        model, x = nn.Sequential(nn.Linear(5, 7, bias=False), nn.BatchNorm1d(7)), torch.randn(3, 5)
    _randomise_batchnorms(model)
    return model, copy.deepcopy(model).eval(), x


@pytest.mark.parametrize("kind, folding", [("conv", FoldingConv2d), ("linear", FoldingLinear)])
def test_torch_layers_fold_their_batchnorm_exactly(kind, folding):
    model, plain, x = _torch_pair(kind)
    assert fold_batchnorm(model) == {"0": "1"} and type(model[0]) is folding
    model.eval()
    with torch.no_grad():
        out = model[0](x)
        assert model[1](out) is out  # the BatchNorm passes the folded output through
        assert (model(x) - plain(x)).abs().max() <= ATOL
        if kind == "conv":  # the folded weight keeps the layer's memory format
            assert model[0]._folded_parameters(model[1])[0].is_contiguous(memory_format=torch.channels_last)
        model[1].running_mean.add_(0.5)  # an edit of the BatchNorm's state refolds
        plain[1].running_mean.add_(0.5)
        assert (model(x) - plain(x)).abs().max() <= ATOL
        model[0].weight.mul_(2)  # so does one of the layer's
        plain[0].weight.mul_(2)
        assert (model(x) - plain(x)).abs().max() <= ATOL


def test_torch_layers_fold_only_in_no_grad_eval_calls_without_hooks():
    model, plain, x = _torch_pair("conv")
    fold_batchnorm(model)
    model.eval()
    out = model[0](x)  # autograd records: the layer's own output
    assert (out - plain[0](x)).abs().max() <= ATOL and model[1](out) is not out
    with torch.no_grad():
        model.train()
        assert (model[0](x) - plain[0](x)).abs().max() <= ATOL
        model.eval()
        handle = model[0].register_forward_hook(lambda m, i, o: None)
        assert (model[0](x) - plain[0](x)).abs().max() <= ATOL
        handle.remove()
        assert (model[0](x) - plain[0](x)).abs().max() > 1e-2  # folded now


def test_torch_layers_unfold_pickle_and_export_as_torch_classes():
    model, plain, x = _torch_pair("conv")
    fold_batchnorm(model)
    model.eval()
    with torch.no_grad():
        model(x)
        for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert folded_batchnorms(clone) == {"0": "1"}
            assert (clone(x) - plain(x)).abs().max() <= ATOL
        assert type(plain_module(copy.deepcopy(model)[0])) is nn.Conv2d
        unfold_batchnorm(model)
        assert type(model[0]) is nn.Conv2d and not folded_batchnorms(model)
        assert (model(x) - plain(x)).abs().max() <= ATOL


def test_a_torch_subclass_is_left_alone():
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(MyConv(4, 6, 3), nn.BatchNorm2d(6))
    assert fold_batchnorm(model) == {} and type(model[0]) is MyConv and type(model[1]) is nn.BatchNorm2d
