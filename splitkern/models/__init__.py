"""Split-aware model definitions.

``SplitReadyResNet``, ``SplitReadyAlexNet``, ``splittable`` and ``torchvision_model`` (torchvision's
models made split-aware, :mod:`splitkern.models.torchvision`) are imported on first use: torchvision
stays optional.
"""

from splitkern.models.alexnet import AlexNet, alexnet
from splitkern.models.wrn import WideResNet, wrn
from splitkern.models.wrn import parse_model_name as _parse_wrn_name

__all__ = ["AlexNet", "TORCHVISION_NAMES", "WideResNet", "alexnet", "build", "parse_model_name", "thin", "wrn"]

# build() name -> torchvision arch ("alexnet" stays our 32x32 AlexNet)
TORCHVISION_NAMES = {"resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50",
                     "resnet101": "resnet101", "resnet152": "resnet152", "wide_resnet50_2": "wide_resnet50_2",
                     "tv-alexnet": "alexnet"}
_LAZY = ("SplitReadyAlexNet", "SplitReadyResNet", "splittable", "torchvision_model")


def __getattr__(name: str):
    """The torchvision-backed names, imported (with torchvision) on first use."""
    if name in _LAZY:
        from splitkern.models import torchvision as _torchvision_models

        return getattr(_torchvision_models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_model_name(name: str) -> dict:
    """``"wrn16-8"`` -> ``{"depth": 16, "widen": 8}``; a torchvision name (``"resnet50"``, ``"tv-alexnet"``)
    -> ``{"arch": "resnet50"}``. Raises ``ValueError`` listing the accepted names for anything else."""
    if name.lower() in TORCHVISION_NAMES:
        return {"arch": TORCHVISION_NAMES[name.lower()]}
    try:
        return _parse_wrn_name(name)
    except ValueError:
        raise ValueError(f"model name {name!r} must be 'alexnet', one of {', '.join(TORCHVISION_NAMES)} "
                         f"(torchvision), or look like 'wrn16-8' (wrn{{depth}}-{{widen}})") from None


def build(name: str, num_classes: int, split=None, *, dropout: float = 0.0, width: int | None = None):
    """A model by CLI name: ``wrn{depth}-{widen}`` (e.g. ``wrn16-8``), ``alexnet`` (32x32 variant) or a
    torchvision model (:data:`TORCHVISION_NAMES`: ``resnet18`` ... ``wide_resnet50_2``, ``tv-alexnet``
    for torchvision's 224x224 AlexNet; fresh weights).

    ``dropout`` is placed the same way split or not (WRN: in every block; AlexNet and tv-alexnet:
    before fc6 and fc7; torchvision's ResNets have none, so ``dropout > 0`` raises ``ValueError``).
    ``width`` makes a thinner member of the family: the last stage's channels (WRN; the others
    scale with it, 1/4 and 1/2) or the hidden units of fc6/fc7 (AlexNet); not for torchvision models.
    """
    if name.lower() == "alexnet":
        return alexnet(num_classes, split=split, variant="cifar", dropout=dropout, hidden=width)
    if name.lower() in TORCHVISION_NAMES:
        if width is not None:
            raise ValueError(f"width={width} (the thin baseline) is not supported for torchvision models ({name})")
        from splitkern.models.torchvision import torchvision_model

        return torchvision_model(TORCHVISION_NAMES[name.lower()], num_classes, split, dropout=dropout)
    channels = None if width is None else (max(1, round(width / 4)), max(1, round(width / 2)), width)
    return wrn(**parse_model_name(name), num_classes=num_classes, split=split, dropout=dropout, channels=channels)


def _full_width(name: str) -> int:
    if name.lower() in TORCHVISION_NAMES:
        raise ValueError(f"the thin baseline (width) is not supported for torchvision models ({name})")
    return 1024 if name.lower() == "alexnet" else 64 * parse_model_name(name)["widen"]


def thin(name: str, num_classes: int, params: int, *, dropout: float = 0.0):
    """The dense member of ``name``'s family whose parameter count is closest to ``params``.

    Searches the ``width`` of :func:`build` (parameters grow with it) by bisection; the result's
    count (conv/linear weights and biases, as ``convert.count_parameters``) is within a few
    percent of ``params`` for all but tiny budgets. Raises ``ValueError`` when even width 1
    has more parameters than ``params`` (AlexNet's convolutions alone, for example).
    """
    from splitkern.splitnet.convert import count_parameters

    def count(width):
        return count_parameters(build(name, num_classes, dropout=dropout, width=width))

    lo, hi = 1, _full_width(name)
    if count(lo) > params:
        raise ValueError(f"params={params:,} is below the smallest {name} ({count(lo):,} parameters at width 1)")
    while hi - lo > 1:  # invariant: count(lo) <= params < count(hi), or hi is the full width
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) <= params else (lo, mid)
    best = min((lo, hi), key=lambda w: abs(count(w) - params))
    return build(name, num_classes, dropout=dropout, width=best)
