"""torchvision ResNets and AlexNet made split-aware by splitkern.models.splittable (issue #14)."""

import copy
import pickle
import subprocess
import sys

import pytest
import torch

torchvision = pytest.importorskip("torchvision")

import splitkern  # noqa: E402
from splitkern import models  # noqa: E402
from splitkern.models.torchvision import SplitReadyAlexNet, SplitReadyResNet, splittable, torchvision_model  # noqa: E402
from splitkern.parallel import SubtreeSet  # noqa: E402
from splitkern.parallel.cost import cost_model  # noqa: E402
from splitkern.splitnet import count_parameters, hard_groups, masked_dense, regularization, split  # noqa: E402
from splitkern.splitnet.plan import LayerRole, split_record  # noqa: E402
from tests.splitnet.test_wrn_split import randomise  # noqa: E402

SIZE = {"resnet18": 32, "resnet50": 32, "alexnet": 64}  # tv AlexNet needs >= 63x63


def tv(arch, classes=10, **kwargs):
    """torchvision's own model, fresh weights."""
    return getattr(torchvision.models, arch)(weights=None, num_classes=classes, **kwargs)


def on_meta(build, *args, **kwargs):
    """``build(*args, **kwargs)`` on the meta device: the structure only, no memory or init time."""
    with torch.device("meta"):
        return build(*args, **kwargs)


def split_aware(arch, spec, classes=10):
    return randomise(splittable(tv(arch, classes), spec))


def batch(arch, n=2):
    return torch.randn(n, 3, SIZE[arch], SIZE[arch], generator=torch.Generator().manual_seed(1))


CASES = [("resnet18", s) for s in ("4", "2-2", "2-2-2", "2-2-2-2", "2-4")] + \
        [("resnet50", "2-4")] + [("alexnet", s) for s in ("4", "2-2", "2-2-2", "2-4-8")]


@pytest.mark.parametrize("arch, spec", CASES)
def test_split_equals_masked_dense_and_keeps_the_weights(arch, spec):
    model = tv(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model = splittable(model, spec)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # not re-initialised
    randomise(model)
    x = batch(arch)
    expected = masked_dense(model).eval()(x)
    split_model = split(model).eval()
    torch.testing.assert_close(split_model(x), expected, rtol=1e-4, atol=1e-4)
    assert count_parameters(split_model) < count_parameters(model)
    value = regularization(model)
    value.backward()
    assert torch.isfinite(value)
    assert all(a.logits.grad is not None and a.logits.grad.abs().sum() > 0 for a in model.assignments.values())


def test_a_trained_model_keeps_its_outputs():
    model = tv("resnet18").eval()
    x = batch("resnet18")
    expected = model(x)
    torch.testing.assert_close(splittable(model, "2-2")(x), expected, rtol=0, atol=0)


def _resnet_count(arch, classes, stage_groups=None, fc_groups=1):
    """Conv/linear weights + biases of torchvision's ResNet, derived from the architecture: stem conv 7x7,
    4 stages of planes 64, 128, 256, 512 (BasicBlock: 3x3, 3x3; Bottleneck: 1x1 to planes, 3x3, 1x1 to
    4 * planes), a 1x1 projection where a block changes width or stride, fc with bias. A stage split
    into G balanced groups keeps 1/G of every conv weight; the fc keeps 1/G of its weight, all biases."""
    stage_groups = stage_groups or {}
    blocks = {"resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3)}[arch]
    total, width = 64 * 3 * 7 * 7, 64
    for s, n in enumerate(blocks):
        planes = 64 * 2 ** s
        out = planes if arch == "resnet18" else 4 * planes
        for b in range(n):
            if arch == "resnet18":
                convs = [planes * width * 9, planes * planes * 9]
            else:
                convs = [planes * width, planes * planes * 9, out * planes]
            if b == 0 and (s > 0 or width != out):
                convs.append(out * width)
            total += sum(convs) // stage_groups.get(s + 1, 1)
            width = out
    return total + classes * width // fc_groups + classes


def _alexnet_count(classes, groups=1):
    """Five convs with biases (64 11x11, 192 5x5, 384/256/256 3x3), fc6 9216->4096, fc7, fc8: 1/G of each fc weight."""
    convs = 64 * 3 * 121 + 64 + 192 * 64 * 25 + 192 + 384 * 192 * 9 + 384 + 256 * 384 * 9 + 256 + 256 * 256 * 9 + 256
    return convs + (9216 * 4096 + 4096 * 4096 + 4096 * classes) // groups + 4096 + 4096 + classes


@pytest.mark.parametrize("arch, dense, split_222", [
    ("resnet18", _resnet_count("resnet18", 1000), _resnet_count("resnet18", 1000, {3: 2, 4: 2}, 2)),
    ("resnet50", _resnet_count("resnet50", 1000), _resnet_count("resnet50", 1000, {3: 2, 4: 2}, 2)),
    ("alexnet", _alexnet_count(1000), _alexnet_count(1000, 2)),
])
def test_parameter_counts_at_1000_classes(arch, dense, split_222):
    # README: resnet18 11,679,912 -> 6,181,032; resnet50 25,503,912 -> 13,469,864; AlexNet 61,100,840 -> 31,789,864
    assert (dense, split_222) == {"resnet18": (11_679_912, 6_181_032), "resnet50": (25_503_912, 13_469_864),
                                  "alexnet": (61_100_840, 31_789_864)}[arch]
    model = torchvision_model(arch, 1000, "2-2-2")
    assert count_parameters(model) == dense == count_parameters(tv(arch, 1000))
    for assignment in model.assignments.values():
        assignment.set_hard(torch.arange(assignment.features) % assignment.groups)
    assert count_parameters(split(model)) == split_222


def test_resnet_plan_follows_the_shortcuts():
    plan = splittable(tv("resnet50"), "2-4-8").split_plan
    assert plan.levels == ("layer3", "layer4", "logits") and plan.start == ("layer3", "layer3_in")
    for stage, out in (("layer3", "layer4_in"), ("layer4", "logits_in")):
        blocks = len(getattr(tv("resnet50"), stage))
        assert {plan.layers[f"{stage}.{b}.conv3"].out_key for b in range(blocks)} == {out}
        assert {plan.layers[f"{stage}.{b}.conv1"].in_key for b in range(1, blocks)} == {out}
        assert plan.layers[f"{stage}.0.downsample.0"] == LayerRole(plan.layers[f"{stage}.0.conv1"].in_key, out, stage)
        assert plan.channels[f"{stage}.0.downsample.1"] == out and plan.channels[f"{stage}.1.bn3"] == out
        assert plan.channels[f"{stage}.1.bn1"] == plan.layers[f"{stage}.1.conv1"].out_key != out
    assert plan.layers["fc"].in_key == "logits_in" and "layer2.0.conv1" not in plan.layers
    model = randomise(splittable(tv("resnet18"), "2-4"))
    assert torch.equal(hard_groups(model, "logits_in", "layer4"), hard_groups(model, "logits_in", "logits") // 2)


def test_bn_scales_frozen_in_split_stages_until_the_split():
    model = splittable(tv("resnet18"), "2-2")
    assert not model.layer4[0].bn1.weight.requires_grad and not model.layer4[0].downsample[1].weight.requires_grad
    assert model.layer3[1].bn2.weight.requires_grad and model.bn1.weight.requires_grad
    assert all(bn.weight.requires_grad for bn in split(model).modules() if isinstance(bn, torch.nn.BatchNorm2d))


@pytest.mark.parametrize("arch, spec", [("resnet18", "2-2-2"), ("alexnet", "2-2")])
def test_pipeline_is_the_forward(arch, spec):
    model = randomise(splittable(tv(arch), spec))
    for m in (model, split(model).eval()):
        x = batch(arch)
        out = x
        for _, step in m.pipeline():
            out = step(out)
        torch.testing.assert_close(out, m(x), rtol=0, atol=0)


@pytest.mark.parametrize("arch, spec", [("resnet18", "2-4"), ("resnet18", "4"), ("alexnet", "2-2-4")])
def test_subtrees_rebuild_the_logits_and_cost_model_runs(arch, spec):
    model = split(split_aware(arch, spec)).eval()
    x = batch(arch, 3)
    expected = model(x)
    subtree_set = SubtreeSet(model)  # subtrees(model) cut, the trunk held once
    assert len(subtree_set.parts) == int(spec[0])
    features = subtree_set.trunk(x)
    out = torch.zeros_like(expected)
    for i, classes in enumerate(subtree_set.classes):
        out[:, classes] = subtree_set.branch(i, features)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert sorted(torch.cat(subtree_set.classes).tolist()) == list(range(10))
    assert sum(p.numel() for p in subtree_set.parameters()) == sum(p.numel() for p in model.parameters())
    report = cost_model(model, x, workers=(1, 2))
    assert report["trunk_flops"] > 0 and len(report["subtree_flops"]) == int(spec[0])
    assert all(f > 0 for f in report["subtree_flops"]) and report["plans"][1]["predicted_speedup"] > 1


@pytest.mark.parametrize("arch, spec", [("resnet18", "2-4"), ("alexnet", "2-2")])
def test_save_and_load_split_model(tmp_path, arch, spec):
    split_model = split(split_aware(arch, spec)).eval()
    loaded = splitkern.load(splitkern.save(split_model, tmp_path / "split.pt")).eval()
    assert type(loaded) is type(split_model)
    x = batch(arch)
    torch.testing.assert_close(loaded(x), split_model(x), rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["resnet18", "alexnet"])
def test_save_and_load_dense_model(tmp_path, arch):
    model = torchvision_model(arch, 10).eval()
    loaded = splitkern.load(splitkern.save(model, tmp_path / "dense.pt")).eval()
    assert type(loaded) is type(model) and loaded.config == model.config and not hasattr(loaded, "assignments")
    x = batch(arch)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    if arch == "resnet18":  # (torchvision's AlexNet shares our AlexNet's class name: save() looks up names)
        with pytest.raises(ValueError, match="save"):
            splitkern.save(tv(arch), tmp_path / "x.pt")  # torchvision's own class: not rebuildable


@pytest.mark.parametrize("arch", ["resnet18", "alexnet"])
def test_pickle_round_trip(arch):
    aware = split_aware(arch, "2-2")
    x = batch(arch)
    for model in (aware, split(aware).eval()):
        with torch.no_grad():
            expected = model(x)
        for trip in (lambda m: pickle.loads(pickle.dumps(m)), copy.deepcopy):
            again = trip(model)
            assert type(again) is type(model)
            with torch.no_grad():
                torch.testing.assert_close(again(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2",
                                  "wide_resnet101_2", "alexnet"])
def test_the_architecture_is_recognised(arch):
    model = splittable(on_meta(tv, arch, 7))
    assert model.config["arch"] == arch and model.config["num_classes"] == 7
    assert isinstance(model, SplitReadyAlexNet if arch == "alexnet" else SplitReadyResNet)


def test_alexnet_dropout_is_kept_and_configurable():
    assert splittable(tv("alexnet", dropout=0.3)).config == {"arch": "alexnet", "num_classes": 10, "dropout": 0.3}
    built = models.build("tv-alexnet", 10, "2-2", dropout=0.5)
    assert [m.p for m in built.modules() if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]
    assert built.split_plan.levels == ("fc7", "fc8") and built.split_plan.gather_layer == "classifier.4"
    assert [m.p for m in models.build("tv-alexnet", 10).modules() if isinstance(m, torch.nn.Dropout)] == [0.0, 0.0]


def test_build_by_name():
    model = models.build("resnet18", 10, "2-2")
    assert isinstance(model, SplitReadyResNet) and model.split_plan.levels == ("layer4", "logits")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    dense = models.build("resnet18", 10)
    weight = dense.layer4[1].conv2.weight.clone()
    aware = splittable(dense, "4")  # a dense model (e.g. trained) made split-aware later
    assert aware is dense and torch.equal(aware.layer4[1].conv2.weight, weight) and "fc" in aware.split_plan.layers
    assert models.parse_model_name("resnet50") == {"arch": "resnet50"}
    assert models.parse_model_name("wrn16-8") == {"depth": 16, "widen": 8}


@pytest.mark.parametrize("make, words", [
    (lambda: splittable(tv("resnet18"), "2-2-2-2-2"), "only 4 split levels"),
    (lambda: splittable(tv("alexnet"), "2-2-2-2"), "only 3 split levels"),
    (lambda: splittable(tv("resnet18"), "16"), "16 groups at level logits do not fit"),
    (lambda: splittable(torch.nn.Sequential(torch.nn.Linear(2, 2))), "unsupported model type Sequential"),
    (lambda: splittable(torchvision.models.squeezenet1_1(weights=None)), "unsupported model type SqueezeNet"),
    (lambda: splittable(on_meta(torchvision.models.resnext50_32x4d, weights=None)), "grouped convolution.*ResNeXt"),
    (lambda: torchvision_model("resnext50_32x4d", 10), "grouped 3x3 convolutions"),
    (lambda: splittable(torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1])),
     "does not match any of"),
    (lambda: splittable(tv("resnet18"), arch="resnet34"), "does not match torchvision's resnet34"),
    (lambda: splittable(on_meta(tv, "resnet50", replace_stride_with_dilation=[False, False, True])),
     "does not match any of"),
    (lambda: splittable(tv("resnet18"), arch="vgg16"), "unknown torchvision architecture 'vgg16'"),
    (lambda: splittable(splittable(tv("resnet18"), "2")), "already splittable"),
    (lambda: splittable(split(splittable(tv("resnet18"), "2"))), "already split"),
    (lambda: models.build("resnet18", 10, dropout=0.3), "no dropout"),
    (lambda: models.build("resnet18", 10, width=64), "not supported for torchvision models"),
    (lambda: models.thin("resnet18", 10, 1000), "not supported for torchvision models"),
    (lambda: models.build("vgg16", 10), "resnet18, .*tv-alexnet.*wrn16-8"),
])
def test_bad_inputs(make, words):
    with pytest.raises(ValueError, match=words):
        make()


def test_resnext_is_refused_on_meta():
    with pytest.raises(ValueError, match="groups=32"):
        splittable(on_meta(torchvision.models.resnext101_32x8d, weights=None), "2")


def test_cluster_init_reaches_every_assignment():
    from splitkern.splitnet.grouping import cluster_groups

    model = splittable(tv("resnet18"), "2-4")
    groups = cluster_groups(model)
    assert set(groups) == set(model.assignments)
    assert all(ids.shape == (model.assignments[k].features,) for k, ids in groups.items())


def test_importing_splitkern_does_not_import_torchvision():
    code = "import sys, splitkern, splitkern.models, splitkern.splitnet.io; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("spec", ["2", "2-4", "2-2-2"])
def test_alexnet_plans_are_one_plan_under_two_sets_of_module_names(spec):
    """torchvision's AlexNet and ours split fc6-fc8 by the same rule (models.alexnet.fc_split_plan)."""
    theirs = splittable(tv("alexnet", classes=10), spec)
    ours = models.alexnet(num_classes=10, split=spec, variant="imagenet")
    names = {"classifier.1": "fc6", "classifier.4": "fc7", "classifier.6": "fc8"}
    assert {names[n]: role for n, role in theirs.split_plan.layers.items()} == ours.split_plan.layers
    assert theirs.split_plan.gather_layer == {v: k for k, v in names.items()}[ours.split_plan.gather_layer]
    assert theirs.split_plan.levels == ours.split_plan.levels
    assert {k: (a.groups, a.features) for k, a in theirs.assignments.items()} == \
        {k: (a.groups, a.features) for k, a in ours.assignments.items()}


def test_alexnet_refuses_more_groups_than_classes_up_front():
    with pytest.raises(ValueError, match="4 groups at level fc8 do not fit AlexNet's classes"):
        models.alexnet(num_classes=3, split="4", variant="cifar")


@pytest.mark.parametrize("arch, spec", [("resnet18", "2-2-2-2"), ("resnet18", "2-2"), ("resnet50", "2-4")])
def test_folding_the_start_permutation_into_the_resnet_trunk_is_exact(arch, spec):
    model = split_aware(arch, spec)
    folded, unfolded = split(model).eval(), split(model, fold_permutation=False).eval()
    start = split_record(folded).plan.start[0]
    assert folded.get_submodule(start)[0].is_identity and not unfolded.get_submodule(start)[0].is_identity
    x = batch(arch)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), unfolded(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch, spec", [("resnet18", "2-2"), ("resnet50", "2-4"), ("alexnet", "2-2")])
def test_accelerate_folds_and_keeps_the_function_of_torchvision_models(arch, spec):
    from splitkern.nn import folded_batchnorms

    model = split_aware(arch, spec)
    x = batch(arch)
    expected = masked_dense(model).eval()(x)
    split_model = split(model, fold_batchnorm=False)
    fast = splitkern.accelerate(split_model, x)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-4)
    assert bool(folded_batchnorms(split_model)) == arch.startswith("resnet")  # AlexNet has no BatchNorm
