"""Worker: image bytes → validated, RGB, size-capped JPEG; boxes mapped onto the stored image.

Rejections raise :class:`ImageRejected` with a reason code (the record is dropped).
Unusual but valid modes (CMYK, palette, alpha, 16-bit, float) are repaired to RGB and the
repair is reported, never silent; so are the two other conversions, each counted
(:attr:`StoredImage.repairs`):

- EXIF orientation 2-8 is applied, as every viewer, OpenCV and detectron2 do when they read the
  image: the stored pixels are what a person saw, and the stored width and height are the
  displayed ones. Boxes are taken in that displayed frame (what an annotator saw), unless the
  record's input declares the raw size (:func:`raw_frame`).
- An animated image (GIF, WebP, APNG, multi-page TIFF) is stored as its first frame.

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
from PIL import ExifTags, Image, UnidentifiedImageError

from pipeline.prep.config import ImageConfig
from pipeline.prep.records import is_text
from pipeline.schema import box_numbers, clean_box

Image.MAX_IMAGE_PIXELS = None  # we enforce ImageConfig.max_pixels ourselves, before decoding

_BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white
# The formats decoded; Pillow would try every plugin it has, EPS among them (Ghostscript).
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# EXIF orientation → the transpose that shows the image as viewers do (ImageOps.exif_transpose's).
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# The orientations that turn the image a quarter (width and height swap), as point maps from the
# raw frame to the displayed one: x and y swapped, then (mirror x, mirror y).
_QUARTER_TURNS = {5: (False, False), 6: (True, False), 7: (True, True), 8: (False, True)}


class ImageRejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class StoredImage:
    jpg: bytes
    width: int
    height: int
    scale: tuple[float, float]  # stored / original (displayed, once oriented), per axis
    repaired: str  # the mode repaired to RGB: "" or e.g. "mode:CMYK"
    orientation: int = 1  # the EXIF orientation applied (1: none)
    animated: str = ""  # the format of an animated image, of which the first frame is stored

    @property
    def repairs(self) -> list[str]:
        """Every conversion made, as ``repaired_by_reason`` counts them."""
        return [
            *([self.repaired] if self.repaired else []),
            *([f"exif_orientation:{self.orientation}"] if self.orientation != 1 else []),
            *([f"first_frame:{self.animated}"] if self.animated else []),
        ]


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
    mode, opened = img.mode, img
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
    orientation = exif_orientation(opened)
    if orientation != 1:  # after the resize: a transpose moves pixels, it does not resample them
        rgb = rgb.transpose(TRANSPOSE[orientation])
        width, height = displayed_size(width, height, orientation)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=cfg.jpeg_quality)
    return StoredImage(
        out.getvalue(),
        rgb.width,
        rgb.height,
        (rgb.width / width, rgb.height / height),
        "" if mode in ("RGB", "L") else f"mode:{mode}",
        orientation,
        opened.format if _is_animated(opened) else "",
    )


def exif_orientation(img: Image.Image) -> int:
    """The EXIF (or XMP) orientation viewers apply, 2-8, or 1: none, or one out of range (viewers
    then show the pixels as stored, and so do we). Read after the pixels: a PNG may hold its EXIF
    after them."""
    value = img.getexif().get(ExifTags.Base.Orientation, 1)  # Pillow skips what it cannot parse
    return int(value) if value in TRANSPOSE else 1


def displayed_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """The size a viewer shows an image of raw ``width`` x ``height`` at: 5-8 turn it a quarter."""
    return (height, width) if orientation in _QUARTER_TURNS else (width, height)


def _is_animated(img: Image.Image) -> bool:
    """Whether ``img`` has frames after its first. Asked after the first is encoded: a GIF finds
    out by seeking to its second frame. A second frame that cannot be read is not counted."""
    try:
        return bool(getattr(img, "is_animated", False))
    except Exception:  # noqa: BLE001 - the first frame is stored either way
        return False


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


def map_boxes(
    boxes: Any, stored: StoredImage, cfg: ImageConfig, declared: tuple[int, int] | None = None
) -> tuple[list[dict], dict[str, int]]:
    """Input boxes (original pixels, displayed frame unless :func:`raw_frame` says otherwise for
    the size the record ``declared``) → clean boxes on the stored image, and drop counts by reason.
    (The reader has already cut a record's boxes to ``cfg.max_boxes``: ``inputs.admit``.)"""
    if boxes is None:
        return [], {}
    if not isinstance(boxes, list):
        return [], {"boxes_not_a_list": 1}
    kept: list[dict] = []
    dropped: dict[str, int] = {}
    sx, sy = stored.scale
    raw = raw_frame(stored, declared)
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
            if raw is not None:
                numbers = from_raw_frame(numbers, raw, stored.orientation)
            scaled = [round(v * s, 2) for v, s in zip(numbers, (sx, sy, sx, sy))]
            clean, reason = clean_box(scaled, stored.width, stored.height)
            if clean is not None:
                kept.append({"box": list(clean), "label": label.strip()})
                continue
        dropped[reason] = dropped.get(reason, 0) + 1
    return kept, dropped


def raw_frame(stored: StoredImage, declared: tuple[int, int] | None) -> tuple[int, int] | None:
    """The raw (un-oriented) size of the image when its record's boxes are in that frame, else
    None: the boxes are in the displayed frame, what an annotator sees in any viewer today (and
    detectron2's convention). The exception is a record whose input declares the image's size
    (``records.declared_size``: a COCO ``images`` entry, a WebDataset sample's ``.json``, an
    index row's ``width``/``height``) as the raw size and not the displayed one, which only a
    quarter turn (orientation 5-8) of a non-square image tells apart: a tool that ignored the
    orientation wrote that size, and its boxes with it."""
    if stored.orientation not in _QUARTER_TURNS or declared is None:
        return None
    shown = (round(stored.width / stored.scale[0]), round(stored.height / stored.scale[1]))
    if shown[0] == shown[1] or declared != shown[::-1]:
        return None
    return shown[1], shown[0]


def from_raw_frame(
    box: tuple[float, float, float, float], size: tuple[int, int], orientation: int
) -> tuple[float, float, float, float]:
    """A box in the raw pixel frame of an image of raw ``size`` → the same pixels once displayed
    (a quarter-turn EXIF ``orientation``, 5-8, applied). An inverted box stays inverted."""
    mirror_x, mirror_y = _QUARTER_TURNS[orientation]
    y0, x0, y1, x1 = box
    height, width = size
    if mirror_x:
        x0, x1 = width - x1, width - x0
    if mirror_y:
        y0, y1 = height - y1, height - y0
    return x0, y0, x1, y1


def _target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))
