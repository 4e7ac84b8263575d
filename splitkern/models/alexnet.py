"""AlexNet (one-tower, as torchvision's) with SplitNet's split levels fc6, fc7, fc8 (Kim et al. 2017).

``variant="imagenet"``: 224x224 inputs, 5 convs (64, 192, 384, 256, 256), 6x6 pooled
features, fc6/fc7 of ``hidden`` (4096) units. ``variant="cifar"``: 32x32 inputs, 3x3
convs, 4x4 pooled features, ``hidden`` 1024 by default.
"""

from __future__ import annotations

from torch import nn

from splitkern.splitnet.assignments import GroupAssignment
from splitkern.splitnet.plan import LayerRole, SplitPlan
from splitkern.splitnet.spec import SplitSpec

LEVELS = ("fc6", "fc7", "fc8")


def fc_split_plan(spec: SplitSpec, widths, layer_names=None, model_name: str = "AlexNet"):
    """Assignments and plan of SplitNet's AlexNet levels: the last ``spec.levels`` of fc6, fc7, fc8.

    ``widths``: the features entering fc6, fc7 and fc8, and the classes; ``layer_names``: each level's
    linear as a module name (default: the level's own name). The features entering a level are assigned
    at its group count, the classes at fc8's; the first split linear gathers. Used by this AlexNet and by
    torchvision's (:mod:`splitkern.models.torchvision`).
    """
    spec.check_levels(LEVELS, model_name)
    levels = LEVELS[len(LEVELS) - spec.levels:]
    names = layer_names or {level: level for level in LEVELS}
    groups = dict(zip(levels, spec.groups))
    keys = ("fc6_in", "fc7_in", "fc8_in", "classes")
    assignments = {}
    for j in range(LEVELS.index(levels[0]), len(keys)):
        level = LEVELS[min(j, 2)]
        if widths[j] < groups[level]:
            raise ValueError(f"split spec {spec}: {groups[level]} groups at level {level} do not fit {model_name}'s "
                             f"{keys[j]} ({widths[j]} features): every group needs at least one")
        assignments[keys[j]] = GroupAssignment(groups[level], widths[j])
    layers = {names[level]: LayerRole(keys[i], keys[i + 1], level) for i, level in enumerate(LEVELS) if level in groups}
    plan = SplitPlan(spec=spec, levels=levels, layers=layers, channels={}, start=None, output_key="classes",
                     gather_layer=names[levels[0]])
    return nn.ModuleDict(assignments), plan


class AlexNet(nn.Module):
    def __init__(self, num_classes: int = 1000, split=None, variant: str = "imagenet", hidden: int | None = None,
                 dropout: float = 0.5):
        super().__init__()
        if variant not in ("imagenet", "cifar"):
            raise ValueError(f"variant must be 'imagenet' or 'cifar', got {variant!r}")
        hidden = hidden or (4096 if variant == "imagenet" else 1024)
        self.config = dict(num_classes=num_classes, variant=variant, hidden=hidden, dropout=dropout)
        if variant == "imagenet":
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
                nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
                nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
            self.pool, side = nn.AdaptiveAvgPool2d(6), 6
        else:
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                nn.Conv2d(64, 192, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
            self.pool, side = nn.AdaptiveAvgPool2d(4), 4
        flat = 256 * side * side
        self.drop6, self.fc6 = nn.Dropout(dropout), nn.Linear(flat, hidden)
        self.drop7, self.fc7 = nn.Dropout(dropout), nn.Linear(hidden, hidden)
        self.fc8 = nn.Linear(hidden, num_classes)
        if split is not None:
            self.assignments, self.split_plan = fc_split_plan(SplitSpec.parse(split),
                                                              (flat, hidden, hidden, num_classes))

    def pipeline(self):
        """The forward as named steps; a split model's subtrees start at a step boundary."""
        return [("features", lambda x: self.pool(self.features(x)).flatten(1)),
                ("fc6", lambda x: self.fc6(self.drop6(x)).relu()),
                ("fc7", lambda x: self.fc7(self.drop7(x)).relu()),
                ("fc8", self.fc8)]

    def forward(self, x):
        for _, step in self.pipeline():
            x = step(x)
        return x


def alexnet(num_classes: int = 1000, split=None, **kwargs) -> AlexNet:
    """AlexNet; ``split="2-2-2"`` splits fc6, fc7 and fc8 (``"4"``: fc8 only)."""
    return AlexNet(num_classes, split=split, **kwargs)
