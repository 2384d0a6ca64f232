"""What the model sees of an image: a stored JPEG resized to the model's square input and
normalised with the backbone's statistics. Training and evaluation both use these two."""

from __future__ import annotations

import io
from collections.abc import Callable

import torch
from PIL import Image
from torchvision import transforms


def model_input_image(jpg: bytes, image_size: int) -> tuple[Image.Image, tuple[int, int]]:
    """JPEG bytes → (the whole image resized to ``image_size``², RGB; its stored size)."""
    with Image.open(io.BytesIO(jpg)) as img:
        size = img.size
        img.draft("RGB", (image_size, image_size))  # JPEG DCT scaling: decode no more than needed
        return img.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC), size


def normalizer(visual: torch.nn.Module) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image → the tensor ``visual`` (an open_clip vision tower) was trained on."""
    return transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(visual.image_mean, visual.image_std)]
    )
