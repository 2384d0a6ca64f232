"""The one place a ``device: auto|cuda|cpu`` choice becomes a torch device."""

from __future__ import annotations

import torch

from pipeline.config import ConfigError, DeviceChoice


def pick_device(choice: DeviceChoice, index: int = 0) -> torch.device:
    """``auto``: GPU ``index`` when one is visible, else the CPU; ``cuda`` fails without one."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda requested but no GPU is visible to this process")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", index)
