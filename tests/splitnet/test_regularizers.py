import pytest
import torch

from splitkern.splitnet import GroupAssignment, balance_reg, disjoint_reg, merge_groups


@pytest.mark.parametrize("groups, d", [(2, 6), (4, 10), (8, 64)])
def test_uniform_assignment_scores_one(groups, d):
    q = torch.full((groups, d), 1.0 / groups)
    assert disjoint_reg(q).item() == pytest.approx(1.0)
    assert balance_reg(q).item() == pytest.approx(1.0)


def test_hard_disjoint_balanced_assignment():
    q = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3).t().float()
    assert disjoint_reg(q).item() == 0.0
    assert balance_reg(q).item() == pytest.approx(1.0)


def test_imbalance_is_penalised():
    # 5 of 6 items in group 0: (25 + 1) / (36 / 2) = 26 / 18
    q = torch.nn.functional.one_hot(torch.tensor([0, 0, 0, 0, 0, 1]), 2).t().float()
    assert balance_reg(q).item() == pytest.approx(26 / 18)


def test_disjoint_hand_computed():
    # two groups, d = 2: <q0, q1> = 0.5*0.5 + 0.25*0.75 = 0.4375; normaliser d (G-1) / (2G) = 0.5
    q = torch.tensor([[0.5, 0.25], [0.5, 0.75]])
    assert disjoint_reg(q).item() == pytest.approx(0.875)


def test_disjoint_needs_two_groups():
    with pytest.raises(ValueError, match="G >= 2"):
        disjoint_reg(torch.ones(1, 4))


def test_assignment_init_and_softmax():
    torch.manual_seed(0)
    a = GroupAssignment(4, 1000)
    assert a.logits.std().item() == pytest.approx(0.01, rel=0.1)
    p = a.probs()
    torch.testing.assert_close(p.sum(0), torch.ones(1000))
    assert a.hard().shape == (1000,) and int(a.hard().max()) < 4


def test_merge_is_consecutive_and_sums():
    p = torch.softmax(torch.randn(4, 5), 0)
    merged = merge_groups(p, 2)
    torch.testing.assert_close(merged, torch.stack([p[0] + p[1], p[2] + p[3]]))
    with pytest.raises(ValueError, match="multiple"):
        merge_groups(p, 3)


def test_set_hard_makes_argmax_follow_groups():
    a = GroupAssignment(3, 6)
    ids = torch.tensor([2, 0, 1, 1, 0, 2])
    a.set_hard(ids)
    assert torch.equal(a.hard(), ids)


def test_r_w_is_the_value_weighted_mean_over_layers_hand_computed():
    """Official weighted_group_loss: sum sg(r) r / sum sg(r). Layers at 1 and 3: (1 + 9) / 4 = 2.5,
    gradient 1/4 and 3/4 (not the sum 4, not the plain mean 2)."""
    from splitkern.splitnet.convert import weighted_layer_mean
    r = torch.tensor([1.0, 3.0], requires_grad=True)
    value = weighted_layer_mean(r)
    value.backward()
    assert value.item() == pytest.approx(2.5)
    torch.testing.assert_close(r.grad, torch.tensor([0.25, 0.75]))
    zero = torch.zeros(2, requires_grad=True)
    weighted_layer_mean(zero).backward()
    assert weighted_layer_mean(zero).item() == 0.0 and torch.isfinite(zero.grad).all()


def test_regularization_terms_take_the_weighted_mean_of_two_split_layers():
    from splitkern.models import alexnet
    from splitkern.splitnet.convert import level_probs, regularization_terms
    from splitkern.splitnet.regularizers import group_weight_reg
    torch.manual_seed(0)
    model = alexnet(10, split="2-2", variant="cifar", hidden=32)
    per_layer = [group_weight_reg(getattr(model, name).weight, level_probs(model, role.in_key, role.level),
                                  level_probs(model, role.out_key, role.level)).item()
                 for name, role in model.split_plan.layers.items()]
    assert len(per_layer) == 2 and per_layer[0] != pytest.approx(per_layer[1])
    expected = sum(r * r for r in per_layer) / sum(per_layer)
    assert regularization_terms(model)["R_W"].item() == pytest.approx(expected, rel=1e-5)
