"""The one place a ``device: auto|cuda|cpu`` choice becomes a torch device, and what a GPU's
name says of its peak (for MFU)."""

from __future__ import annotations

import re

import torch

from pipeline.config import ConfigError, DeviceChoice


def pick_device(choice: DeviceChoice, index: int = 0) -> torch.device:
    """``auto``: GPU ``index`` when one is visible, else the CPU; ``cuda`` fails without one."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda requested but no GPU is visible to this process")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", index)


# Dense bf16 tensor-core peak in TFLOP/s by a word of the device's name, most specific first.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("H100", 989.0),  # SXM: "NVIDIA H100 80GB HBM3"
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),  # SXM and PCIe
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
)


def bf16_peak_tflops(device_name: str) -> float | None:
    """The peak of a device by its name (``torch.cuda.get_device_name``); None if not known."""
    return next(
        (peak for name, peak in BF16_PEAK_TFLOPS if re.search(rf"\b{re.escape(name)}\b", device_name)), None
    )


def device_peak_tflops(device: torch.device) -> float | None:
    """The bf16 peak of ``device`` if it is a GPU in :data:`BF16_PEAK_TFLOPS`, else None."""
    return bf16_peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
