"""Worker: image bytes → validated, RGB, size-capped JPEG; boxes mapped onto the stored image.

Rejections raise :class:`ImageRejected` with a reason code (the record is dropped).
Unusual but valid modes (CMYK, palette, alpha, 16-bit, float) are repaired to RGB and the
repair is reported, never silent.

JPEGs are decoded by libjpeg-turbo through simplejpeg with its warnings as errors: Pillow
decodes a JPEG cut short, or one whose header claims more pixels than its data holds, into grey
filler without a word, and such images would be stored as if real.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from pipeline.prep.config import ImageConfig
from pipeline.prep.records import is_text
from pipeline.schema import box_numbers, clean_box

Image.MAX_IMAGE_PIXELS = None  # we enforce ImageConfig.max_pixels ourselves, before decoding

_BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white
# The formats decoded; Pillow would try every plugin it has, EPS among them (Ghostscript).
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


class ImageRejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class StoredImage:
    jpg: bytes
    width: int
    height: int
    scale: tuple[float, float]  # stored / original, per axis
    repaired: str  # "" or e.g. "mode:CMYK"


def encode(data: bytes, cfg: ImageConfig) -> StoredImage:
    """Decode, validate and re-encode one image."""
    if not data:  # PIL cannot tell an empty file from garbage; we can
        raise ImageRejected("image_empty", "0 bytes")
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError as e:
        raise ImageRejected(
            "image_not_decodable", f"not one of {', '.join(FORMATS)}"
        ) from e  # PIL's text names an address
    except Exception as e:  # PIL raises many types on garbage headers
        raise ImageRejected("image_corrupt", f"{type(e).__name__}: {e}") from e
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageRejected("image_empty", f"{width}x{height}")
    if width * height > cfg.max_pixels:
        raise ImageRejected("image_too_large", f"{width}x{height} > {cfg.max_pixels} pixels")
    target = _target_size(width, height, cfg.max_side)
    mode = img.mode
    try:
        if img.format == "JPEG":
            img = _decode_jpeg(data, img, target)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
    except Exception as e:
        raise ImageRejected("image_corrupt", f"{type(e).__name__}: {e}") from e
    rgb = to_rgb(img)
    if rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.BICUBIC)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=cfg.jpeg_quality)
    return StoredImage(
        out.getvalue(),
        target[0],
        target[1],
        (target[0] / width, target[1] / height),
        "" if mode in ("RGB", "L") else f"mode:{mode}",
    )


def _decode_jpeg(data: bytes, header: Image.Image, target: tuple[int, int]) -> Image.Image:
    """The JPEG decoded strictly (a libjpeg warning raises ValueError), scaled in the DCT domain
    to the smallest size that still covers ``target``: a large photo never decodes at full size."""
    if header.mode == "CMYK":  # libjpeg-turbo has no CMYK → RGB; Pillow knows Adobe's inverted CMYK
        simplejpeg.decode_jpeg(data, colorspace="CMYK", min_factor=8, strict=True)  # the check alone
        header.draft("RGB", target)
        return header
    pixels = simplejpeg.decode_jpeg(
        data,
        colorspace="GRAY" if header.mode == "L" else "RGB",
        min_width=target[0],
        min_height=target[1],
        strict=True,
    )
    return Image.fromarray(pixels[..., 0] if header.mode == "L" else pixels)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB. High bit-depth is rescaled (PIL's convert would clip it)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16"):  # 65535 → 255 exactly, in 16-bit integers: no float copy
        return Image.fromarray((np.asarray(img) // 257).astype(np.uint8)).convert("RGB")
    if img.mode in ("I", "F"):  # one float32 copy, scaled in place
        a = np.asarray(img, dtype=np.float32).copy()
        a *= 255.0 / max(float(a.max()), 1.0)
        return Image.fromarray(np.clip(a, 0, 255, out=a).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def map_boxes(boxes: Any, stored: StoredImage, cfg: ImageConfig) -> tuple[list[dict], dict[str, int]]:
    """Input boxes (original pixels) → clean boxes on the stored image, and drop counts by reason.
    (The reader has already cut a record's boxes to ``cfg.max_boxes``: ``inputs.admit``.)"""
    if boxes is None:
        return [], {}
    if not isinstance(boxes, list):
        return [], {"boxes_not_a_list": 1}
    kept: list[dict] = []
    dropped: dict[str, int] = {}
    sx, sy = stored.scale
    for item in boxes:
        label = item.get("label") if isinstance(item, dict) else None
        numbers = box_numbers(item.get("box")) if isinstance(item, dict) else "box_malformed"
        if not isinstance(label, str) or not label.strip() or not is_text(label):
            reason = "box_label_invalid"
        elif len(label) > cfg.max_label_chars:
            reason = "box_label_too_long"
        elif isinstance(numbers, str):
            reason = numbers
        else:
            scaled = [round(v * s, 2) for v, s in zip(numbers, (sx, sy, sx, sy))]
            clean, reason = clean_box(scaled, stored.width, stored.height)
            if clean is not None:
                kept.append({"box": list(clean), "label": label.strip()})
                continue
        dropped[reason] = dropped.get(reason, 0) + 1
    return kept, dropped


def _target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))
