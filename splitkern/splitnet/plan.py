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
    inside the last split layer). ``start_stream``: how the activation entering ``start`` can be
    produced in grouped order instead, ``(module name, role)`` for every trunk layer that writes or
    reads it: ``"out"`` (a conv/linear's output channels), ``"in"`` (its input channels) or
    ``"channels"`` (a BatchNorm); empty when the model declares none (a permute stays).
    """

    spec: SplitSpec
    levels: tuple[str, ...]
    layers: dict[str, LayerRole]
    channels: dict[str, str]
    start: tuple[str, str] | None
    output_key: str
    gather_layer: str | None = None
    start_stream: tuple[tuple[str, str], ...] = ()

    def groups(self, level: str) -> int:
        return self.spec.groups[self.levels.index(level)]


@dataclass(frozen=True, eq=False)
class SplitRecord:
    """What :func:`splitkern.splitnet.split` records on the model it returns (``model.split_record``).

    ``model``: class name of the split-aware model; ``config``: its constructor arguments;
    ``spec``: the split spec as a string (``"2-2-2"``); ``hard``: per assignment key, the (d,)
    int64 native hard group ids (CPU) the split used; ``plan``: the :class:`SplitPlan` (which
    module is which split layer, for subtree extraction and export). Read it with
    :func:`split_record`.
    """

    model: str
    config: dict
    spec: str
    hard: dict
    plan: SplitPlan

    def meta(self) -> dict:
        """``{"model", "config", "spec", "hard"}``: what :func:`splitkern.save` writes next to the weights."""
        return {"model": self.model, "config": dict(self.config), "spec": self.spec, "hard": dict(self.hard)}


def is_split(model) -> bool:
    """Whether ``model`` was returned by :func:`splitkern.splitnet.split` (carries a :class:`SplitRecord`)."""
    return isinstance(getattr(model, "split_record", None), SplitRecord)


def split_record(model) -> SplitRecord:
    """The :class:`SplitRecord` of a model returned by :func:`splitkern.splitnet.split`.

    Raises ``ValueError`` for any other model (dense, or split-aware but not yet split).
    """
    record = getattr(model, "split_record", None)
    if not isinstance(record, SplitRecord):
        raise ValueError(f"{type(model).__name__} is not a split model: it carries no split record (take a model "
                         "returned by splitkern.splitnet.split() or loaded by splitkern.load() from split.pt)")
    return record


def plan_of(model) -> SplitPlan:
    """The split plan of a split-aware model (one built with ``split=SPEC`` and not yet split), else a
    ``ValueError`` saying how to build one."""
    plan = getattr(model, "split_plan", None)
    if plan is None or not hasattr(model, "assignments"):
        raise ValueError("model has no split assignments: build it with split=SPEC (e.g. wrn(16, 8, split='2-2-2'))")
    return plan
