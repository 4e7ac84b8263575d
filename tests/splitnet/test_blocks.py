"""Block structure of split-aware weights: off-block fraction, moved groups, and the anneal to the split."""

import copy

import pytest
import torch
from torch.nn.utils import parametrize

from splitkern.models import alexnet, wrn
from splitkern.splitnet import masked_dense, split
from splitkern.splitnet.blocks import (BlockAnneal, block_mask, moved, off_block_fraction, off_block_fractions,
                                       weight_parameter)
from tests.splitnet.test_wrn_split import randomise


def test_off_block_fraction_by_hand():
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    weight = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert off_block_fraction(weight, mask) == pytest.approx((4 + 9) / (1 + 4 + 9 + 16))
    assert off_block_fraction(weight * mask, mask) == 0.0  # block-diagonal
    assert off_block_fraction(weight * (1 - mask), mask) == pytest.approx(1.0)  # purely off-block
    conv = torch.ones(2, 2, 3, 3)
    conv[0, 1] = 2.0  # one off-block kernel with 4x the energy of the others
    assert off_block_fraction(conv, mask.view(2, 2, 1, 1)) == pytest.approx((4 + 1) / (1 + 4 + 1 + 1))
    assert off_block_fraction(torch.zeros(2, 2), mask) == 0.0
    with pytest.raises(ValueError, match="mask"):
        off_block_fraction(weight, torch.ones(3, 2))


def groups_model():
    """A WRN-10-1 split 2-4 with known hard groups: feature i of every assignment in group i % G."""
    model = wrn(10, 1, 12, split="2-4")
    for assignment in model.assignments.values():
        assignment.set_hard(torch.arange(assignment.features) % assignment.groups, 5.0)
    return model


def test_block_mask_matches_a_hand_built_mask():
    model = groups_model()
    plan = model.split_plan
    for name, role in plan.layers.items():
        out_ids = torch.arange(model.assignments[role.out_key].features) % model.assignments[role.out_key].groups
        in_ids = torch.arange(model.assignments[role.in_key].features) % model.assignments[role.in_key].groups
        groups = plan.groups(role.level)  # a lower tree level merges consecutive groups: id // ratio
        out_ids = out_ids // (model.assignments[role.out_key].groups // groups)
        in_ids = in_ids // (model.assignments[role.in_key].groups // groups)
        expected = torch.tensor([[float(o == i) for i in in_ids.tolist()] for o in out_ids.tolist()])
        mask = block_mask(model, name)
        assert torch.equal(mask.view(expected.shape), expected), name


def test_off_block_fractions_of_masked_and_inverse_masked_weights():
    model = groups_model()
    fractions = off_block_fractions(model)
    assert set(fractions) == set(model.split_plan.layers)
    assert all(0 < f < 1 for f in fractions.values())  # random init weights have mass everywhere
    assert all(f == 0 for f in off_block_fractions(masked_dense(model)).values())
    with torch.no_grad():
        for name in model.split_plan.layers:
            model.get_submodule(name).weight.mul_(1 - block_mask(model, name))
    assert all(f == pytest.approx(1.0) for f in off_block_fractions(model).values())


def test_moved_counts_classes_and_features_apart():
    before = {"classes": torch.tensor([0, 0, 1, 1]), "a": torch.tensor([0, 1, 2]), "b": torch.tensor([1, 1])}
    after = {"classes": torch.tensor([1, 0, 1, 0]), "a": torch.tensor([0, 2, 2]), "b": torch.tensor([0, 0])}
    assert moved(before, after, "classes") == (2, 3)
    assert moved(before, before, "classes") == (0, 0)
    with pytest.raises(ValueError, match="keys"):
        moved(before, {"classes": after["classes"]}, "classes")


def test_anneal_scales_only_the_off_block_weights():
    model = groups_model()
    raw = {name: model.get_submodule(name).weight.detach().clone() for name in model.split_plan.layers}
    masks = {name: block_mask(model, name) for name in raw}
    anneal = BlockAnneal(model, first_step=10, steps=4)
    assert [anneal.lam_at(s) for s in (0, 10, 11, 12, 13, 20)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    anneal.at_step(11)
    for name, w in raw.items():
        expected = w * masks[name] + 0.5 * w * (1 - masks[name])
        assert torch.equal(model.get_submodule(name).weight, expected)
        assert torch.equal(weight_parameter(model.get_submodule(name)), w)  # the stored weight is untouched
    assert off_block_fractions(model)[next(iter(raw))] < off_block_fraction(next(iter(raw.values())),
                                                                            next(iter(masks.values())))
    with pytest.raises(ValueError, match="already parametrized"):
        BlockAnneal(model, 0, 1)
    with pytest.raises(ValueError, match="lam"):
        anneal.set_lam(1.5)
    anneal.finish()
    for name, w in raw.items():
        module = model.get_submodule(name)
        assert not parametrize.is_parametrized(module)
        assert torch.equal(module.weight, w * masks[name])
    assert set(model.state_dict()) == set(groups_model().state_dict())  # plain keys again


def test_quadratic_anneal_reaches_zero_at_three_quarters_and_stays():
    anneal = BlockAnneal(groups_model(), first_step=10, steps=8, shape="quadratic")
    lams = [anneal.lam_at(s) for s in range(8, 20)]
    expected = [1.0, 1.0] + [(1 - min(k / 6, 1)) ** 2 for k in range(1, 9)] + [0.0, 0.0]
    assert lams == pytest.approx(expected)
    assert lams[2:] == sorted(lams[2:], reverse=True) and lams.index(0.0) == 7  # step 15: 6 of 8 steps done
    linear = BlockAnneal(groups_model(), first_step=10, steps=8)
    assert all(q <= lin for q, lin in zip(lams, (linear.lam_at(s) for s in range(8, 20))))  # never more off-block
    with pytest.raises(ValueError, match="shape"):
        BlockAnneal(groups_model(), 0, 4, shape="cosine")


def test_anneal_gradient_is_scaled_off_block():
    model = groups_model()
    anneal = BlockAnneal(model, 0, 4)
    anneal.set_lam(0.25)
    name = next(iter(model.split_plan.layers))
    module = model.get_submodule(name)
    module.weight.sum().backward()
    mask = block_mask(model, name)
    expected = (mask + 0.25 * (1 - mask)).expand_as(module.weight)
    torch.testing.assert_close(weight_parameter(module).grad, expected)
    with pytest.raises(ValueError, match="steps"):
        BlockAnneal(groups_model(), 0, 0)


def tv_resnet(spec):
    torchvision = pytest.importorskip("torchvision")
    from splitkern.models.torchvision import splittable
    return splittable(torchvision.models.resnet18(weights=None, num_classes=10), spec)


@pytest.mark.parametrize("build, spec, size", [
    (lambda spec: wrn(10, 2, 10, split=spec), "2-2-2", 32),
    (lambda spec: wrn(10, 2, 10, split=spec), "2-4", 32),
    (lambda spec: alexnet(10, split=spec, variant="cifar", hidden=64), "2-2-2", 32),
    (tv_resnet, "2-2", 32),
])
def test_at_lam_zero_the_unsplit_model_computes_the_split_model(build, spec, size):
    torch.manual_seed(0)
    model = randomise(build(spec))
    expected_split = split(copy.deepcopy(model)).eval()
    x = torch.randn(3, 3, size, size)
    anneal = BlockAnneal(model, 0, 5)
    anneal.set_lam(0.0)
    torch.testing.assert_close(model.eval()(x), expected_split(x), rtol=0, atol=1e-5)
    anneal.set_lam(1.0)  # lam = 1 is the dense model again
    assert (model(x) - expected_split(x)).abs().max() > 1e-3
    anneal.finish()
    torch.testing.assert_close(model(x), expected_split(x), rtol=0, atol=1e-5)
    torch.testing.assert_close(split(model).eval()(x), expected_split(x), rtol=0, atol=1e-5)


def test_balanced_kmeans_gives_equal_groups_and_keeps_clear_clusters():
    from splitkern.splitnet.grouping import balanced_assign, kmeans
    gen = torch.Generator().manual_seed(0)
    rows = torch.cat([torch.randn(14, 3, generator=gen) * 0.1, torch.randn(6, 3, generator=gen) * 0.1 + 5])
    plain = kmeans(rows, 2, seed=0)
    assert sorted(torch.bincount(plain).tolist()) == [6, 14]  # the unbalanced truth
    ids = kmeans(rows, 2, seed=0, balanced=True)
    assert torch.bincount(ids).tolist() == [10, 10]
    far = ids[14:]  # the six far rows stay together
    assert len(set(far.tolist())) == 1
    dist = torch.tensor([[0.0, 1.0], [0.1, 2.0], [0.2, 0.3]])
    assert balanced_assign(dist).tolist() == [0, 0, 1]  # 3 rows, 2 groups: capacities 2 and 1
