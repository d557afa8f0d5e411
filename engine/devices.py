"""Device names as users type them (auto, cpu, cuda, cuda:N) turned into torch devices."""
from __future__ import annotations

import torch

from engine.errors import StyleDeckError


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; a device that is not there is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise StyleDeckError(f"Unknown device {name!r}; use auto, cpu, cuda or cuda:N.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StyleDeckError(f"Device {name!r} was asked for, but PyTorch sees no CUDA device here; use --device cpu.")
    return device
