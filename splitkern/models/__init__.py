"""Split-aware model definitions."""

from splitkern.models.wrn import WideResNet, parse_model_name, wrn

__all__ = ["WideResNet", "parse_model_name", "wrn"]
