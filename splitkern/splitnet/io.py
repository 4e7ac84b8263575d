"""Saving and rebuilding models: state_dict + constructor config (+ split spec and hard groups), no pickled classes.

Two formats: a split model (from :func:`splitkern.splitnet.split`) and a dense model of the
package's families (what ``splitkern train --init-from`` starts from).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from splitkern.splitnet.plan import is_split, split_record

FORMAT = "splitkern-split-v1"
DENSE_FORMAT = "splitkern-dense-v1"


def _builders():
    """Model class name -> constructor called as ``builder(**config)`` or ``builder(**config, split=spec)``.

    The torchvision-backed classes (:mod:`splitkern.models.torchvision`) import torchvision only when built.
    """
    from splitkern.models import AlexNet, WideResNet

    return {"WideResNet": WideResNet, "AlexNet": AlexNet,
            "SplitReadyResNet": _lazy("SplitReadyResNet"), "SplitReadyAlexNet": _lazy("SplitReadyAlexNet")}


def _lazy(name: str):
    """A builder for ``splitkern.models.<name>`` that imports it (and torchvision) when called."""
    def build(**config):
        import splitkern.models as models

        return getattr(models, name)(**config)

    return build


def save(model: nn.Module, path: str | os.PathLike, *, input_shape: tuple[int, int, int] | None = None) -> Path:
    """Write ``model`` to ``path`` (loadable by :func:`load`).

    ``model`` is a split model returned by :func:`splitkern.splitnet.split`, or a dense
    (unsplit, no assignments) WideResNet/AlexNet of :mod:`splitkern.models`. ``input_shape``
    ``(channels, height, width)`` records the images it was trained on (``splitkern infer`` and
    ``plan`` check data against it; :func:`describe` reads it back).
    """
    if not is_split(model):
        ours = type(model).__name__ in _builders() and type(model).__module__.startswith("splitkern.")
        if not ours or hasattr(model, "assignments") or not hasattr(model, "config"):
            raise ValueError("save() takes a model returned by splitkern.splitnet.split() or a dense model of "
                             "splitkern.models without assignments (WideResNet, AlexNet, or a torchvision model made "
                             f"splittable: splitkern.models.splittable), got {type(model).__module__}."
                             f"{type(model).__name__}")
        meta = {"format": DENSE_FORMAT, "model": type(model).__name__, "config": dict(model.config)}
    else:
        meta = {"format": FORMAT, **split_record(model).meta()}
    if input_shape is not None:
        if len(input_shape) != 3 or not all(isinstance(n, int) and n > 0 for n in input_shape):
            raise ValueError(f"input_shape must be (channels, height, width) of positive ints, got {input_shape!r}")
        meta["input_shape"] = list(input_shape)
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({**meta, "state_dict": state}, path)
    return path


def _read(path, mmap: bool = False) -> dict:
    """The saved dict, checked to be a splitkern model file. ``mmap``: tensors are mapped, not read
    (for what only needs the metadata and the shapes)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the model file (e.g. {path / 'split.pt'})")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # torch's own message (often about weights_only) would mislead: it is kept chained
        raise ValueError(f"{path}: not a splitkern model file (torch.load cannot read it: truncated, corrupt, or "
                         "not written by splitkern.save)") from exc
    if not isinstance(blob, dict) or blob.get("format") not in (FORMAT, DENSE_FORMAT):
        raise ValueError(f"{path}: not a splitkern model (format {FORMAT!r} or {DENSE_FORMAT!r} expected)")
    if blob.get("model") not in _builders():
        raise ValueError(f"{path}: unknown model {blob.get('model')!r}; known: {sorted(_builders())}")
    return blob


def describe(path: str | os.PathLike) -> dict:
    """What a file saved by :func:`save` holds, without building the model: ``format``, ``model``
    (class name), ``config`` (its constructor arguments, ``num_classes`` among them), ``spec`` (split
    models), ``input_shape`` (``(C, H, W)`` or None when not recorded) and ``parameters``. The weights
    are memory-mapped, not read: describing before :func:`load` does not read the file twice."""
    blob = _read(path, mmap=True)
    return {"format": blob["format"], "model": blob["model"], "config": dict(blob["config"]),
            "spec": blob.get("spec"), "input_shape": tuple(blob["input_shape"]) if "input_shape" in blob else None,
            "parameters": sum(v.numel() for v in blob["state_dict"].values() if v.is_floating_point())}


def load(path: str | os.PathLike, map_location="cpu") -> nn.Module:
    """Rebuild the model saved by :func:`save` (weights_only loading: tensors and plain data).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for anything that is not a
    splitkern model file (a folder, a truncated or corrupt file, another format).
    """
    blob = _read(path)
    builder = _builders()[blob["model"]]
    if blob["format"] == DENSE_FORMAT:
        model = builder(**blob["config"])
    else:
        from splitkern.splitnet.convert import split

        aware = builder(**blob["config"], split=blob["spec"])
        for key, ids in blob["hard"].items():
            aware.assignments[key].set_hard(ids)
        model = split(aware)
    model.load_state_dict(blob["state_dict"])
    return model.to(map_location)
