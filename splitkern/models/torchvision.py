"""torchvision's ResNets and AlexNet made split-aware (SplitNet, Kim et al. 2017), trained weights kept.

:func:`splittable` turns an instance of ``torchvision.models.ResNet`` (BasicBlock or Bottleneck:
resnet18/34/50/101/152, wide_resnet50_2/101_2) or ``torchvision.models.AlexNet`` into a
:class:`SplitReadyResNet` / :class:`SplitReadyAlexNet` in place (its class is swapped, its weights
are untouched) that carries ``config``, ``pipeline()`` and, with ``split=SPEC``, its group
``assignments`` and :class:`~splitkern.splitnet.plan.SplitPlan`: what
:func:`~splitkern.splitnet.regularization`, :func:`~splitkern.splitnet.split`,
:func:`~splitkern.save` and :mod:`splitkern.parallel` work on.

Split levels, lowest first (a spec with L levels splits the last L):

* ResNet: ``layer2``, ``layer3``, ``layer4``, ``logits`` (the ``fc``). Identity shortcuts make every
  block of a stage write the stage's output assignment (the next level's input); each block's inner
  channels (BasicBlock: conv1's outputs; Bottleneck: conv1's and conv2's) get their own. The
  projection shortcut (``downsample``) splits with its block. torchvision's blocks are
  post-activation, so each BN normalises the outputs of the conv before it.
* AlexNet: ``fc6``, ``fc7``, ``fc8`` (``classifier.1``, ``classifier.4``, ``classifier.6``).

As in :class:`~splitkern.models.wrn.WideResNet`, the BN scales inside split stages are frozen
while the groups are learned (docs/design.md §1.2); :func:`~splitkern.splitnet.split` unfreezes them.
ResNeXt's grouped 3x3 convolutions cannot be expressed by SplitConv2d and are refused.
"""

from __future__ import annotations

import torch
from torch import nn

try:
    import torchvision
    from torchvision.models.alexnet import AlexNet
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("splitkern.models.torchvision needs torchvision: pip install torchvision") from exc

from splitkern.models.alexnet import LEVELS as ALEXNET_LEVELS
from splitkern.models.alexnet import fc_split_plan
from splitkern.splitnet.assignments import GroupAssignment
from splitkern.splitnet.plan import LayerRole, SplitPlan, is_split
from splitkern.splitnet.spec import SplitSpec

RESNET_LEVELS = ("layer2", "layer3", "layer4", "logits")
ALEXNET_LAYERS = {"fc6": "classifier.1", "fc7": "classifier.4", "fc8": "classifier.6"}

# arch -> (block, blocks per stage, extra ResNet arguments), as torchvision.models.<arch> builds it
RESNETS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), {}),
    "resnet34": (BasicBlock, (3, 4, 6, 3), {}),
    "resnet50": (Bottleneck, (3, 4, 6, 3), {}),
    "resnet101": (Bottleneck, (3, 4, 23, 3), {}),
    "resnet152": (Bottleneck, (3, 8, 36, 3), {}),
    "wide_resnet50_2": (Bottleneck, (3, 4, 6, 3), {"width_per_group": 128}),
    "wide_resnet101_2": (Bottleneck, (3, 4, 23, 3), {"width_per_group": 128}),
}
ARCHS = (*RESNETS, "alexnet")


class SplitReadyResNet(ResNet):
    """A torchvision ResNet with ``config``, ``pipeline()`` and (split-aware) ``assignments``/``split_plan``.

    ``SplitReadyResNet(arch, num_classes, split)`` builds ``torchvision.models.<arch>(weights=None,
    num_classes=num_classes)`` (fresh weights); :func:`splittable` converts an existing instance.
    Input ``(N, 3, H, W)`` (any H, W >= 32) -> logits ``(N, num_classes)``.
    """

    def __init__(self, arch: str = "resnet18", num_classes: int = 1000, split=None):
        if arch not in RESNETS:
            raise ValueError(_unknown_arch(arch))
        block, layers, kwargs = RESNETS[arch]
        super().__init__(block, list(layers), num_classes=num_classes, **kwargs)
        _attach(self, arch, split)

    def pipeline(self):
        """The forward as named steps (stem, layer1..4, head, fc); the split starts at a step boundary."""
        return [("stem", self._stem), ("layer1", self.layer1), ("layer2", self.layer2), ("layer3", self.layer3),
                ("layer4", self.layer4), ("head", self._head), ("fc", self.fc)]

    def _stem(self, x):
        """(N, 3, H, W) -> (N, 64, H/4, W/4): conv1, bn1, relu, maxpool."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def _head(self, x):
        """(N, C, h, w) -> (N, C): global average pool."""
        return torch.flatten(self.avgpool(x), 1)


class SplitReadyAlexNet(AlexNet):
    """torchvision's AlexNet (224x224 inputs) with ``config``, ``pipeline()`` and (split-aware)
    ``assignments``/``split_plan``; ``SplitReadyAlexNet("alexnet", num_classes, split, dropout)`` builds
    ``torchvision.models.alexnet(weights=None, num_classes=num_classes, dropout=dropout)``.
    Input ``(N, 3, H, W)`` (H, W >= 63) -> logits ``(N, num_classes)``.
    """

    def __init__(self, arch: str = "alexnet", num_classes: int = 1000, split=None, dropout: float = 0.5):
        if arch != "alexnet":
            raise ValueError(_unknown_arch(arch))
        super().__init__(num_classes=num_classes, dropout=dropout)
        _attach(self, arch, split)

    def pipeline(self):
        """The forward as named steps: features (+ pool, flatten: (N, 9216)), then fc6, fc7, fc8 by module name."""
        c = self.classifier
        return [("features", lambda x: torch.flatten(self.avgpool(self.features(x)), 1)),
                ("classifier.1", lambda x: c[2](c[1](c[0](x)))),
                ("classifier.4", lambda x: c[5](c[4](c[3](x)))),
                ("classifier.6", c[6])]


def splittable(model: nn.Module, split=None, *, arch: str | None = None) -> nn.Module:
    """Make a torchvision ResNet or AlexNet split-aware, in place; returns ``model``.

    ``split``: a spec such as ``"2-2-2"`` (groups per level, lowest level first; None: only
    ``config``/``pipeline()``, a dense model :func:`splitkern.save` can write). ``arch``: the
    torchvision name (``"resnet50"``, ``"alexnet"``, ...), inferred from the structure when None.
    The weights are kept (a trained model can be split); the assignments start near uniform.
    Raises ``ValueError`` for an unsupported model (another type, a ResNeXt, a non-standard
    architecture), a model that is already split-aware or split, or a spec that does not fit.
    """
    if is_split(model):
        raise ValueError("model is already split (returned by splitkern.splitnet.split()); splittable() takes a "
                         "dense torchvision model")
    if hasattr(model, "assignments"):
        raise ValueError(f"model ({type(model).__name__}) is already splittable: it has group assignments")
    if isinstance(model, ResNet):
        _check_resnet_blocks(model)
        cls = SplitReadyResNet
    elif isinstance(model, AlexNet):
        cls = SplitReadyAlexNet
    else:
        raise ValueError(f"unsupported model type {type(model).__name__}: splittable() takes a torchvision ResNet "
                         f"({', '.join(RESNETS)}) or AlexNet")
    arch = _identify(model, _arguments(model), arch, cls)
    model.__class__ = cls
    _attach(model, arch, split)
    return model


def torchvision_model(arch: str, num_classes: int, split=None, *, dropout: float | None = None) -> nn.Module:
    """``torchvision.models.<arch>(weights=None, num_classes=num_classes)``, split-aware with ``split``.

    ``dropout``: AlexNet's (None: torchvision's 0.5); a ResNet has none, so anything but None/0 raises.
    """
    if arch == "alexnet":
        return SplitReadyAlexNet(arch, num_classes, split, dropout=0.5 if dropout is None else dropout)
    if arch not in RESNETS:
        raise ValueError(_unknown_arch(arch))
    if dropout:
        raise ValueError(f"dropout={dropout}: torchvision's {arch} has no dropout layers (use dropout=0)")
    return SplitReadyResNet(arch, num_classes, split)


# --- recognising the architecture ------------------------------------------------------------------------------

def _unknown_arch(arch) -> str:
    if isinstance(arch, str) and arch.startswith("resnext"):
        return (f"{arch} is not supported: its grouped 3x3 convolutions (groups > 1) cannot be split "
                "by SplitConv2d")
    return f"unknown torchvision architecture {arch!r}; supported: {', '.join(ARCHS)}"


def _check_resnet_blocks(model: ResNet) -> None:
    """Only BasicBlock/Bottleneck stages with ungrouped convolutions can be split."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise ValueError(f"{name} is a grouped convolution (groups={module.groups}, as in ResNeXt): SplitConv2d "
                             "cannot express it, so this model cannot be split")
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for block in getattr(model, stage):
            if type(block) not in (BasicBlock, Bottleneck):
                raise ValueError(f"{stage} holds a {type(block).__name__}: only torchvision's BasicBlock and "
                                 "Bottleneck blocks can be split")


def _signature(model: nn.Module) -> list[tuple[str, str, str]]:
    """(name, type, extra_repr) of every submodule: channel counts, kernels, strides, dilations, groups, norms
    (not whether a ReLU is in place)."""
    return [(name, type(m).__name__, "" if isinstance(m, nn.ReLU) else m.extra_repr())
            for name, m in model.named_modules() if name]


def _reference(arch: str, config: dict) -> nn.Module:
    """torchvision's own ``arch`` with ``config``, on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return getattr(torchvision.models, arch)(weights=None, **config)


def _candidates(model: nn.Module, cls) -> list[str]:
    if cls is SplitReadyAlexNet:
        return ["alexnet"]
    layers = tuple(len(getattr(model, f"layer{i}")) for i in range(1, 5))
    return [arch for arch, (block, counts, _) in RESNETS.items()
            if counts == layers and isinstance(model.layer1[0], block)]


def _identify(model: nn.Module, config: dict, arch: str | None, cls) -> str:
    """The torchvision arch whose structure ``model`` has (``arch`` checked when given)."""
    if arch is not None and arch not in ARCHS:
        raise ValueError(_unknown_arch(arch))
    candidates = _candidates(model, cls) if arch is None else [arch]
    signature = _signature(model)
    for name in candidates:
        if _signature(_reference(name, config)) == signature:
            return name
    what = f"torchvision's {arch}" if arch is not None else f"any of {', '.join(ARCHS)}"
    raise ValueError(f"this {type(model).__name__} does not match {what} (layers, widths, strides, dilation and "
                     "norm layers must be those of torchvision's builder): cannot rebuild it, so cannot split it")


# --- split plans ------------------------------------------------------------------------------------------------

def _attach(model: nn.Module, arch: str, split) -> None:
    """Set ``config`` and, for a spec, ``assignments`` and ``split_plan`` (BN scales of split stages frozen)."""
    model.config = {"arch": arch, **_arguments(model)}
    if isinstance(model, AlexNet):  # in place on a split layer's output fails under autograd (a view, one group)
        model.classifier[2].inplace = model.classifier[5].inplace = False
    if split is None:
        return
    spec = SplitSpec.parse(split)
    plan_of = _resnet_plan if isinstance(model, ResNet) else _alexnet_plan
    model.assignments, model.split_plan = plan_of(model, spec, arch)


def _arguments(model: nn.Module) -> dict:
    """Builder arguments besides ``arch`` that rebuild its shapes: ``num_classes`` (and AlexNet's ``dropout``)."""
    if isinstance(model, ResNet):
        return {"num_classes": model.fc.out_features}
    return {"num_classes": model.classifier[6].out_features, "dropout": float(model.classifier[0].p)}


class _Plan:
    """Collects assignments (key -> GroupAssignment at its level's groups), layer roles and BN channels."""

    def __init__(self, spec: SplitSpec, levels: tuple[str, ...], model_name: str):
        self.spec, self.levels, self.model_name = spec, levels, model_name
        self.groups = dict(zip(levels, spec.groups))
        self.assignments: dict[str, GroupAssignment] = {}
        self.layers: dict[str, LayerRole] = {}
        self.channels: dict[str, str] = {}

    def assign(self, key: str, level: str, features: int) -> str:
        groups = self.groups[level]
        if features < groups:
            raise ValueError(f"split spec {self.spec}: {groups} groups at level {level} do not fit {self.model_name}'s "
                             f"{key} ({features} features): every group needs at least one")
        self.assignments[key] = GroupAssignment(groups, features)
        return key

    def build(self, start, gather_layer, output_key: str = "classes", start_stream=()):
        plan = SplitPlan(spec=self.spec, levels=self.levels, layers=self.layers, channels=self.channels,
                         start=start, output_key=output_key, gather_layer=gather_layer, start_stream=start_stream)
        return nn.ModuleDict(self.assignments), plan


def _split_levels(spec: SplitSpec, available: tuple[str, ...], model_name: str) -> tuple[str, ...]:
    spec.check_levels(available, model_name)
    return available[len(available) - spec.levels:]


def _resnet_plan(model: ResNet, spec: SplitSpec, arch: str):
    """Assignments and plan for the last ``spec.levels`` of layer2, layer3, layer4, logits."""
    plan = _Plan(spec, _split_levels(spec, RESNET_LEVELS, arch), arch)
    widths = {"layer2": model.layer2[0].conv1.in_channels, "layer3": model.layer3[0].conv1.in_channels,
              "layer4": model.layer4[0].conv1.in_channels, "logits": model.fc.in_features}
    entry = {level: plan.assign(f"{level}_in", level, widths[level]) for level in plan.levels}
    plan.assign("classes", "logits", model.fc.out_features)
    for level in plan.levels:
        if level == "logits":
            plan.layers["fc"] = LayerRole(entry["logits"], "classes", "logits")
        else:  # the stage writes the next level's input features
            _plan_stage(model, plan, level, entry[level], entry[RESNET_LEVELS[RESNET_LEVELS.index(level) + 1]])
    first = plan.levels[0]
    if first == "logits":
        return plan.build(start=None, gather_layer="fc")
    return plan.build(start=(first, entry[first]), gather_layer=None, start_stream=_resnet_stream(model, first))


def _resnet_stream(model: ResNet, level: str) -> tuple[tuple[str, str], ...]:
    """The layers that write or read the activation entering ``level`` (:attr:`SplitPlan.start_stream`): the
    residual stream of the stages before it, back through identity shortcuts to a downsample or the stem.
    The ReLU after each add and the stem's max-pool act per channel, so they commute with a permutation."""
    stages = ("layer1", "layer2", "layer3", "layer4")
    roles = []
    for stage in reversed(stages[:stages.index(level)]):
        blocks = getattr(model, stage)
        for b in reversed(range(len(blocks))):
            prefix, block = f"{stage}.{b}", blocks[b]
            last = "3" if hasattr(block, "conv3") else "2"  # Bottleneck or BasicBlock
            roles += [(f"{prefix}.conv{last}", "out"), (f"{prefix}.bn{last}", "channels")]
            if block.downsample is not None:
                return (*roles, (f"{prefix}.downsample.0", "out"), (f"{prefix}.downsample.1", "channels"))
            roles.append((f"{prefix}.conv1", "in"))
    return (*roles, ("conv1", "out"), ("bn1", "channels"))


def _plan_stage(model: ResNet, plan: _Plan, level: str, stage_in: str, stage_out: str) -> None:
    """Roles of one stage's convs (conv1..conv3, downsample.0) and BNs; BN scales frozen."""
    for b, block in enumerate(getattr(model, level)):
        prefix = f"{level}.{b}"
        block_in = stage_in if b == 0 else stage_out
        if block.downsample is None and block_in != stage_out:
            raise ValueError(f"{prefix} has an identity shortcut between different groupings")
        convs = ["conv1", "conv2", "conv3"] if isinstance(block, Bottleneck) else ["conv1", "conv2"]
        inner = [plan.assign(f"{level}_block{b}_inner{j}", level, getattr(block, conv).out_channels)
                 for j, conv in enumerate(convs[:-1], 1)]
        keys = [block_in, *inner, stage_out]
        for j, conv in enumerate(convs):
            plan.layers[f"{prefix}.{conv}"] = LayerRole(keys[j], keys[j + 1], level)
            plan.channels[f"{prefix}.bn{j + 1}"] = keys[j + 1]  # post-activation: bn_j normalises conv_j's outputs
        if block.downsample is not None:
            plan.layers[f"{prefix}.downsample.0"] = LayerRole(block_in, stage_out, level)
            plan.channels[f"{prefix}.downsample.1"] = stage_out
        for bn in block.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.weight.requires_grad_(False)  # BN scale frozen in split layers while groups are learned


def _alexnet_plan(model: AlexNet, spec: SplitSpec, arch: str):
    """Assignments and plan for the last ``spec.levels`` of fc6, fc7, fc8 (:func:`fc_split_plan`)."""
    widths = [model.get_submodule(ALEXNET_LAYERS[level]).in_features for level in ALEXNET_LEVELS]
    return fc_split_plan(spec, (*widths, model.classifier[6].out_features), ALEXNET_LAYERS)


__all__ = ["ALEXNET_LEVELS", "ARCHS", "RESNETS", "RESNET_LEVELS", "SplitReadyAlexNet", "SplitReadyResNet",
           "splittable", "torchvision_model"]
