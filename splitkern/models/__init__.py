"""Split-aware model definitions."""

from splitkern.models.alexnet import AlexNet, alexnet
from splitkern.models.wrn import WideResNet, parse_model_name, wrn

__all__ = ["AlexNet", "WideResNet", "alexnet", "build", "parse_model_name", "thin", "wrn"]


def build(name: str, num_classes: int, split=None, *, dropout: float = 0.0, width: int | None = None):
    """A model by CLI name: ``wrn{depth}-{widen}`` (e.g. ``wrn16-8``) or ``alexnet`` (32x32 variant).

    ``dropout`` is placed the same way split or not (WRN: in every block; AlexNet: before fc6 and fc7).
    ``width`` makes a thinner member of the family: the last stage's channels (WRN; the others
    scale with it, 1/4 and 1/2) or the hidden units of fc6/fc7 (AlexNet).
    """
    if name.lower() == "alexnet":
        return alexnet(num_classes, split=split, variant="cifar", dropout=dropout, hidden=width)
    channels = None if width is None else (max(1, round(width / 4)), max(1, round(width / 2)), width)
    return wrn(**parse_model_name(name), num_classes=num_classes, split=split, dropout=dropout, channels=channels)


def _full_width(name: str) -> int:
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
