"""Wide ResNet (pre-activation; Zagoruyko & Komodakis 2016), split-aware.

Split levels, lowest first: stage 2, stage 3, logits. With ``split=SPEC`` the model
carries its group assignments (``model.assignments``) and a
:class:`~splitkern.splitnet.plan.SplitPlan` naming, for every split layer, the
assignments of its input and output features; identity shortcuts make a block's
output grouping equal its input grouping, each block's inner channels get their own.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from splitkern.splitnet.assignments import GroupAssignment
from splitkern.splitnet.plan import LayerRole, SplitPlan
from splitkern.splitnet.spec import SplitSpec

LEVELS = ("stage2", "stage3", "logits")


class BasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 with an identity or 1x1 projection shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False) if in_ch != out_ch or stride != 1 else None

    def forward(self, x):
        # In place where the tensor is this block's own (a BatchNorm's or a conv's output; a folded BatchNorm
        # passes through a conv output nothing else reads): no allocation, one memory pass less.
        act = F.relu(self.bn1(x), inplace=True)
        residual = x if self.shortcut is None else self.shortcut(act)
        out = self.conv1(act)
        out = self.conv2(self.dropout(F.relu(self.bn2(out), inplace=True)))
        return out.add_(residual)


class WideResNet(nn.Module):
    """WRN-depth-widen: conv 3->16, three stages of (depth-4)/6 blocks (16k, 32k, 64k channels), BN-ReLU, pool, FC.

    ``dropout`` sits between the two convs of every block (the WRN paper's place), split or not,
    so a dense and a split model with the same ``dropout`` are regularised the same way.
    ``channels`` overrides the three stage widths (a thinner net of the same family).
    """

    def __init__(self, depth: int = 16, widen: int = 8, num_classes: int = 100, split=None,
                 dropout: float = 0.0, channels: tuple[int, int, int] | None = None):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
        if widen < 1 or num_classes < 2:
            raise ValueError(f"WRN needs widen >= 1 and num_classes >= 2, got {widen} and {num_classes}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if channels is not None and (len(channels) != 3 or min(channels) < 1):
            raise ValueError(f"channels must be three stage widths >= 1, got {channels!r}")
        self.config = dict(depth=depth, widen=widen, num_classes=num_classes, dropout=dropout)
        if channels is not None:
            self.config["channels"] = tuple(int(c) for c in channels)
        spec = SplitSpec.parse(split) if split is not None else None
        if spec:
            spec.check_levels(LEVELS, f"WRN-{depth}-{widen}")
        split_levels = LEVELS[len(LEVELS) - spec.levels:] if spec else ()
        blocks = (depth - 4) // 6
        widths = (16, *(channels or (16 * widen, 32 * widen, 64 * widen)))
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.stages = nn.Sequential(*(
            nn.Sequential(*(BasicBlock(widths[s] if b == 0 else widths[s + 1], widths[s + 1],
                                       (1 if s == 0 else 2) if b == 0 else 1, dropout)
                            for b in range(blocks)))
            for s in range(3)))
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        self._init_weights()
        if spec:
            self.assignments, self.split_plan = self._plan(spec, split_levels, widths, blocks, num_classes)

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def _plan(self, spec, split_levels, widths, blocks, num_classes):
        groups = dict(zip(split_levels, spec.groups))
        assignments, layers, channels = {}, {}, {}

        def assign(key, level, features):
            assignments[key] = GroupAssignment(groups[level], features)
            return key

        # The features entering each split level belong to that level's input assignment.
        # A stage's output is the next level's input (merged to this level's groups in a tree).
        entry = {level: assign(f"{level}_in", level, widths[LEVELS.index(level) + 1] if level != "logits"
                               else widths[3]) for level in split_levels}
        entry["logits"] = entry.get("logits") or assign("logits_in", "logits", widths[3])
        assign("classes", "logits", num_classes)
        next_level = {"stage2": "stage3", "stage3": "logits"}
        for level in split_levels:
            if level == "logits":
                layers["fc"] = LayerRole(entry["logits"], "classes", level)
                continue
            s = LEVELS.index(level) + 1  # stage index in self.stages (stage2 -> 1)
            stage_out = entry[next_level[level]]
            stage_in = entry[level]
            for b in range(blocks):
                prefix = f"stages.{s}.{b}"
                block_in = stage_in if b == 0 else stage_out
                inner = assign(f"{level}_block{b}_inner", level, widths[s + 1])
                layers[f"{prefix}.conv1"] = LayerRole(block_in, inner, level)
                layers[f"{prefix}.conv2"] = LayerRole(inner, stage_out, level)
                if self.stages[s][b].shortcut is not None:
                    layers[f"{prefix}.shortcut"] = LayerRole(block_in, stage_out, level)
                channels[f"{prefix}.bn1"] = block_in
                channels[f"{prefix}.bn2"] = inner
                self.stages[s][b].bn1.weight.requires_grad_(False)  # BN scale frozen in split layers
                self.stages[s][b].bn2.weight.requires_grad_(False)
            if level == "stage3":
                channels["bn"] = stage_out
        first = split_levels[0]
        start = None if first == "logits" else (f"stages.{LEVELS.index(first) + 1}", entry[first])
        plan = SplitPlan(spec=spec, levels=tuple(split_levels), layers=layers, channels=channels, start=start,
                         output_key="classes", gather_layer="fc" if start is None else None,
                         start_stream=self._stream_into(LEVELS.index(first) + 1) if start else ())
        return nn.ModuleDict(assignments), plan

    def _stream_into(self, stage: int) -> tuple[tuple[str, str], ...]:
        """The trunk layers that write or read the activation entering ``stages[stage]`` (the residual
        stream: back through identity shortcuts to a projection shortcut or the stem), with their roles
        (:attr:`SplitPlan.start_stream`)."""
        roles = []
        for s in reversed(range(stage)):
            for b in reversed(range(len(self.stages[s]))):
                prefix = f"stages.{s}.{b}"
                roles.append((f"{prefix}.conv2", "out"))
                if self.stages[s][b].shortcut is not None:
                    return (*roles, (f"{prefix}.shortcut", "out"))
                roles += [(f"{prefix}.bn1", "channels"), (f"{prefix}.conv1", "in")]
        return (*roles, ("conv1", "out"))

    def pipeline(self):
        """The forward as named steps; a split model's subtrees start at a step boundary."""
        return [("conv1", self.conv1), ("stages.0", self.stages[0]), ("stages.1", self.stages[1]),
                ("stages.2", self.stages[2]), ("head", self._head), ("fc", self.fc)]

    def _head(self, x):
        return F.adaptive_avg_pool2d(F.relu(self.bn(x), inplace=True), 1).flatten(1)

    def forward(self, x):
        for _, step in self.pipeline():
            x = step(x)
        return x


def wrn(depth: int = 16, widen: int = 8, num_classes: int = 100, split=None, **kwargs) -> WideResNet:
    """WRN-depth-widen for 32x32 inputs; ``split="2-2-2"`` etc. adds SplitNet assignments."""
    return WideResNet(depth, widen, num_classes, split=split, **kwargs)


def parse_model_name(name: str) -> dict:
    """``"wrn16-8"`` -> ``{"depth": 16, "widen": 8}``."""
    try:
        depth, widen = name.lower().removeprefix("wrn").split("-")
        return {"depth": int(depth), "widen": int(widen)}
    except ValueError:
        raise ValueError(f"model name {name!r} must be 'alexnet' or look like 'wrn16-8' "
                         f"(wrn{{depth}}-{{widen}})") from None


__all__ = ["BasicBlock", "WideResNet", "parse_model_name", "wrn"]
