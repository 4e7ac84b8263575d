"""What a split-aware model declares about itself: which layers split, with which assignments."""

from __future__ import annotations

from dataclasses import dataclass

from splitkern.splitnet.spec import SplitSpec


@dataclass(frozen=True)
class LayerRole:
    """A conv/linear whose weight is split: the assignment keys of its input and output features."""

    in_key: str
    out_key: str
    level: str


@dataclass(frozen=True)
class SplitPlan:
    """Split layers, per-channel modules (BN) and where grouped order starts.

    ``layers``: module name -> :class:`LayerRole`. ``channels``: module name of a
    per-channel layer (BatchNorm) -> the key of the features it normalises.
    ``start``: (module name, key) before which activations are permuted into grouped
    order, or None when ``gather_layer`` (the first split layer, a linear) gathers its
    input itself. ``output_key``: the assignment of the model's outputs (un-permuted
    inside the last split layer).
    """

    spec: SplitSpec
    levels: tuple[str, ...]
    layers: dict[str, LayerRole]
    channels: dict[str, str]
    start: tuple[str, str] | None
    output_key: str
    gather_layer: str | None = None

    def groups(self, level: str) -> int:
        return self.spec.groups[self.levels.index(level)]
