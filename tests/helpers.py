"""Shared test helpers (import after tests/conftest.py has set TRITON_INTERPRET)."""

import torch

from splitkern import backend

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fast_backends(op: str, dtype=torch.float32) -> list[str]:
    """Non-reference backends that can run ``op`` on the test device."""
    return [b for b in backend.available_backends(DEVICE, op, dtype) if b != "reference"]


def random_permutation(n: int, device=DEVICE) -> torch.Tensor:
    return torch.randperm(n).to(device)
