import pytest
import torch

import splitkern
from splitkern.models import parse_model_name, wrn
from splitkern.splitnet import SplitSpec, count_parameters, hard_groups, masked_dense, regularization, split

SPECS = ["4", "4-4", "2-2-2", "2-4-8"]


def randomise(model):
    """Unequal groups and trained-looking BN statistics, in eval mode."""
    for assignment in model.assignments.values():
        torch.nn.init.normal_(assignment.logits, std=3.0)  # diverse, unequal groups
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.normal_()
    return model.eval()


def randomised(spec, depth=10, widen=2, classes=10):
    return randomise(wrn(depth, widen, classes, split=spec))


@pytest.mark.parametrize("spec", SPECS)
def test_split_model_equals_masked_dense(spec):
    model = randomised(spec)
    x = torch.randn(3, 3, 32, 32)
    expected = masked_dense(model).eval()(x)
    split_model = split(model).eval()
    torch.testing.assert_close(split_model(x), expected, rtol=1e-5, atol=1e-5)
    assert count_parameters(split_model) < count_parameters(model)


@pytest.mark.parametrize("spec, expected", [(None, 11_000_340), ("2-2-2", 5_731_860), ("4-4-4", 3_097_620),
                                            ("2-4-8", 3_615_508)])
def test_wrn16_8_parameter_counts_match_the_official_code(spec, expected):
    # docs/design.md §1.6: WRN-16-8 11,000,340; 2-2-2 5.73M; 4-4-4 3.10M; 2-4-8 3.62M (balanced, BN excluded)
    model = wrn(16, 8, 100, split=spec)
    if spec is not None:
        for assignment in model.assignments.values():
            assignment.set_hard(torch.arange(assignment.features) % assignment.groups)
        model = split(model)
    assert count_parameters(model) == expected


def test_tree_levels_nest():
    model = randomised("2-4-8")
    plan = model.split_plan
    stage3_out = plan.layers["stages.2.0.conv2"].out_key
    fine = hard_groups(model, stage3_out, "logits")
    coarse = hard_groups(model, stage3_out, "stage3")
    assert torch.equal(coarse, fine // 2)  # each 4-group is the union of two consecutive 8-groups


def test_residual_blocks_share_their_output_grouping():
    plan = wrn(16, 2, 10, split="2-2-2").split_plan
    for stage in (1, 2):
        outs = {plan.layers[f"stages.{stage}.{b}.conv2"].out_key for b in range(2)}
        ins = {plan.layers[f"stages.{stage}.1.conv1"].in_key}
        assert len(outs) == 1 and ins == outs
        assert plan.layers[f"stages.{stage}.0.conv1"].out_key != plan.layers[f"stages.{stage}.1.conv1"].out_key


def test_regularization_has_gradients_for_weights_and_assignments():
    model = wrn(10, 1, 10, split="2-2-2")
    value = regularization(model)
    value.backward()
    assert torch.isfinite(value)
    assert all(a.logits.grad is not None and a.logits.grad.abs().sum() > 0 for a in model.assignments.values())
    assert model.stages[2][0].conv1.weight.grad.abs().sum() > 0
    assert model.stages[0][0].conv1.weight.grad is None  # not a split layer


def test_near_uniform_assignment_regularizers_are_one():
    model = wrn(10, 1, 10, split="4")
    with torch.no_grad():
        for a in model.assignments.values():
            a.logits.zero_()
    total = regularization(model, gammas=(1.0, 0.0, 1.0))
    assert total.item() == pytest.approx(2.0, rel=1e-6)  # R_D = R_E = 1 at uniform


def test_split_layers_freeze_bn_scale():
    model = wrn(10, 1, 10, split="4-4")
    assert not model.stages[2][0].bn1.weight.requires_grad
    assert model.stages[1][0].bn1.weight.requires_grad


@pytest.mark.parametrize("split_spec", [None, "4-4"])
def test_dropout_is_the_same_in_dense_and_split_models(split_spec):
    """Dropout sits in every block whether or not the model is split; none at all by default."""
    assert not any(isinstance(m, torch.nn.Dropout) for m in wrn(10, 1, 10, split=split_spec).modules())
    drops = [m for m in wrn(10, 1, 10, split=split_spec, dropout=0.3).modules() if isinstance(m, torch.nn.Dropout)]
    assert len(drops) == 3 and all(m.p == 0.3 for m in drops)  # one per block, WRN-10 has 3 blocks


def test_save_and_load_roundtrip(tmp_path):
    split_model = split(randomised("2-4-8")).eval()
    path = splitkern.save(split_model, tmp_path / "split.pt")
    loaded = splitkern.load(path).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), split_model(x))


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(2)}, path)
    with pytest.raises(ValueError, match="not a splitkern model"):
        splitkern.load(path)


@pytest.mark.parametrize("spec, error, words", [
    ("0", ValueError, "at least 2 groups"),
    ("4-3", ValueError, "multiple"),
    ("2-2-2-2", ValueError, "only 3 split levels"),
    ("two", ValueError, "dash-separated"),
    (2.5, TypeError, "split spec"),
])
def test_bad_specs(spec, error, words):
    with pytest.raises(error, match=words):
        wrn(10, 1, 10, split=spec)


def test_spec_parsing():
    assert SplitSpec.parse("2-4-8").groups == (2, 4, 8) and str(SplitSpec.parse(4)) == "4"
    assert parse_model_name("wrn16-8") == {"depth": 16, "widen": 8}
    with pytest.raises(ValueError, match="wrn16-8"):
        parse_model_name("vgg16")
    with pytest.raises(ValueError, match="6n\\+4"):
        wrn(12, 1, 10)


@pytest.mark.parametrize("variant, size", [("cifar", 32), ("imagenet", 224)])
@pytest.mark.parametrize("spec", ["4", "2-2", "2-2-2", "2-4-8"])
def test_alexnet_split_equals_masked_dense(variant, size, spec):
    from splitkern.models import alexnet

    torch.manual_seed(0)
    model = alexnet(10, split=spec, variant=variant, hidden=64).eval()
    for assignment in model.assignments.values():
        torch.nn.init.normal_(assignment.logits, std=3.0)
    x = torch.randn(2, 3, size, size)
    expected = masked_dense(model).eval()(x)
    split_model = split(model).eval()
    torch.testing.assert_close(split_model(x), expected, rtol=1e-5, atol=1e-5)
    assert count_parameters(split_model) < count_parameters(model)
    assert regularization(model).isfinite()


def test_alexnet_save_load_and_bad_spec(tmp_path):
    from splitkern.models import alexnet

    split_model = split(alexnet(10, split="2-2-2", variant="cifar", hidden=32)).eval()
    loaded = splitkern.load(splitkern.save(split_model, tmp_path / "a.pt")).eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), split_model(x))
    with pytest.raises(ValueError, match="only 3 split levels"):
        alexnet(10, split="2-2-2-2")
    with pytest.raises(ValueError, match="variant"):
        alexnet(10, variant="mnist")
