"""Saving and rebuilding split models: state_dict + split spec + hard groups, no pickled classes."""

from __future__ import annotations

from pathlib import Path

import torch

FORMAT = "splitkern-split-v1"


def _builders():
    from splitkern.models import AlexNet, WideResNet

    return {"WideResNet": WideResNet, "AlexNet": AlexNet}


def save(split_model, path) -> Path:
    """Write a model returned by :func:`splitkern.splitnet.split` to ``path`` (loadable by :func:`load`)."""
    meta = getattr(split_model, "split_meta", None)
    if meta is None:
        raise ValueError("save() takes a model returned by splitkern.splitnet.split()")
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in split_model.state_dict().items()}
    torch.save({"format": FORMAT, **meta, "state_dict": state}, path)
    return path


def load(path, map_location="cpu"):
    """Rebuild the split model saved by :func:`save` (weights_only loading: tensors and plain data)."""
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: not a splitkern split model ({exc})") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path}: not a splitkern split model (format {FORMAT!r} expected)")
    builders = _builders()
    if blob["model"] not in builders:
        raise ValueError(f"{path}: unknown model {blob['model']!r}; known: {sorted(builders)}")
    from splitkern.splitnet.convert import split

    model = builders[blob["model"]](**blob["config"], split=blob["spec"])
    for key, ids in blob["hard"].items():
        model.assignments[key].set_hard(ids)
    result = split(model)
    result.load_state_dict(blob["state_dict"])
    return result
