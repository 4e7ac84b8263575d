"""Saving and rebuilding models: state_dict + constructor config (+ split spec and hard groups), no pickled classes.

Two formats: a split model (from :func:`splitkern.splitnet.split`) and a dense model of the
package's families (what ``splitkern train --init-from`` starts from).
"""

from __future__ import annotations

from pathlib import Path

import torch

FORMAT = "splitkern-split-v1"
DENSE_FORMAT = "splitkern-dense-v1"


def _builders():
    from splitkern.models import AlexNet, WideResNet

    return {"WideResNet": WideResNet, "AlexNet": AlexNet}


def save(model, path) -> Path:
    """Write ``model`` to ``path`` (loadable by :func:`load`).

    ``model`` is a split model returned by :func:`splitkern.splitnet.split`, or a dense
    (unsplit, no assignments) WideResNet/AlexNet of :mod:`splitkern.models`.
    """
    meta = getattr(model, "split_meta", None)
    if meta is None:
        if type(model).__name__ not in _builders() or hasattr(model, "assignments"):
            raise ValueError("save() takes a model returned by splitkern.splitnet.split() or a dense "
                             f"WideResNet/AlexNet without assignments, got {type(model).__name__}")
        meta = {"format": DENSE_FORMAT, "model": type(model).__name__, "config": dict(model.config)}
    else:
        meta = {"format": FORMAT, **meta}
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({**meta, "state_dict": state}, path)
    return path


def load(path, map_location="cpu"):
    """Rebuild the model saved by :func:`save` (weights_only loading: tensors and plain data).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for anything that is not a
    splitkern model file.
    """
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: not a splitkern model ({exc})") from exc
    if not isinstance(blob, dict) or blob.get("format") not in (FORMAT, DENSE_FORMAT):
        raise ValueError(f"{path}: not a splitkern model (format {FORMAT!r} or {DENSE_FORMAT!r} expected)")
    builders = _builders()
    if blob["model"] not in builders:
        raise ValueError(f"{path}: unknown model {blob['model']!r}; known: {sorted(builders)}")
    if blob["format"] == DENSE_FORMAT:
        model = builders[blob["model"]](**blob["config"])
        model.load_state_dict(blob["state_dict"])
        return model
    from splitkern.splitnet.convert import split

    model = builders[blob["model"]](**blob["config"], split=blob["spec"])
    for key, ids in blob["hard"].items():
        model.assignments[key].set_hard(ids)
    result = split(model)
    result.load_state_dict(blob["state_dict"])
    return result
