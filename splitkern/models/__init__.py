"""Split-aware model definitions."""

from splitkern.models.alexnet import AlexNet, alexnet
from splitkern.models.wrn import WideResNet, parse_model_name, wrn

__all__ = ["AlexNet", "WideResNet", "alexnet", "build", "parse_model_name", "wrn"]


def build(name: str, num_classes: int, split=None):
    """A model by CLI name: ``wrn{depth}-{widen}`` (e.g. ``wrn16-8``) or ``alexnet`` (32x32 variant)."""
    if name.lower() == "alexnet":
        return alexnet(num_classes, split=split, variant="cifar")
    return wrn(**parse_model_name(name), num_classes=num_classes, split=split)
