"""What the model sees of an image: a stored JPEG resized to the model's square input and
normalised with the backbone's statistics. Training and evaluation both use these two."""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable

import torch
from PIL import Image
from torchvision import transforms

from pipeline.batch import Box


def model_input_image(
    jpg: bytes, image_size: int, crop: Box | None = None, draft: bool = False
) -> tuple[Image.Image, tuple[int, int]]:
    """JPEG bytes → (the image, or its ``crop`` in stored pixels, resized to ``image_size``², RGB;
    the stored size).

    By default the image is decoded in full, as open_clip's own transform (``resize_mode: squash``,
    bicubic) and so clip_benchmark and the papers' evaluation code do. ``draft`` lets the JPEG
    decoder scale by a power of two first (DCT scaling, no smaller than needed): several times
    faster on large photos, a slightly different image; training uses it, evaluation does not.
    """
    with Image.open(io.BytesIO(jpg)) as img:
        size = img.size
        x0, y0, x1, y1 = crop or (0, 0, *size)
        if draft:
            fx, fy = image_size / (x1 - x0), image_size / (y1 - y0)
            img.draft("RGB", (math.ceil(size[0] * fx), math.ceil(size[1] * fy)))
        sx, sy = img.size[0] / size[0], img.size[1] / size[1]
        box = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
        return img.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC, box=box), size


def random_resized_crop(
    size: tuple[int, int],
    scale: tuple[float, float],
    rng: random.Random,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Box:
    """torchvision's ``RandomResizedCrop.get_params`` drawing from ``rng`` (so a read is repeatable):
    a crop of ``scale`` of the area and aspect ``ratio`` (log-uniform), 10 tries, then the
    largest centre crop within ``ratio``."""
    width, height = size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def normalizer(visual: torch.nn.Module) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image → the tensor ``visual`` (an open_clip vision tower) was trained on."""
    return transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(visual.image_mean, visual.image_std)]
    )
