"""A toy op added through the registry alone (tests/test_registry.py): ``toy_scale(x, alpha) = alpha * x``."""
