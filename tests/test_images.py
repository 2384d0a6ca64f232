import io
import math
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from pipeline.prep.config import ImageConfig
from pipeline.prep.images import ImageRejected, StoredImage, encode, map_boxes, to_rgb

CFG = ImageConfig(max_side=64, jpeg_quality=90, max_pixels=1_000_000)


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _jpeg(size=(200, 100), color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="JPEG")
    return out.getvalue()


def test_caps_longest_side_and_keeps_aspect():
    stored = encode(_jpeg((200, 100)), CFG)
    assert (stored.width, stored.height) == (64, 32)
    assert stored.scale == (64 / 200, 32 / 100)
    img = Image.open(io.BytesIO(stored.jpg))
    assert img.format == "JPEG" and img.mode == "RGB" and img.size == (64, 32)
    assert stored.repaired == ""


def test_small_image_is_not_upscaled():
    stored = encode(_jpeg((40, 20)), CFG)
    assert (stored.width, stored.height) == (40, 20)


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("CMYK", "mode:CMYK"),
        ("P", "mode:P"),
        ("LA", "mode:LA"),
        ("RGBA", "mode:RGBA"),
        ("L", ""),
    ],
)
def test_unusual_modes_are_repaired_to_rgb(mode, expected):
    img = Image.new("RGB", (30, 20), (10, 200, 10)).convert(mode)
    data = io.BytesIO()
    img.save(data, format="TIFF" if mode == "CMYK" else "PNG")
    stored = encode(data.getvalue(), CFG)
    assert stored.repaired == expected
    assert Image.open(io.BytesIO(stored.jpg)).mode == "RGB"


def test_sixteen_bit_is_rescaled_not_clipped():
    a = np.full((10, 10), 32768, dtype=np.uint16)  # mid grey in 16 bits
    stored = encode(_png(Image.fromarray(a)), CFG)
    pixel = Image.open(io.BytesIO(stored.jpg)).getpixel((5, 5))
    assert stored.repaired.startswith("mode:I")
    assert all(abs(c - 128) <= 2 for c in pixel)


def test_high_bit_depth_converts_without_float64_copies():
    """A 16-bit image costs about 4 bytes a pixel to convert (was 8 per float64 copy, several)."""
    a = (np.arange(2000 * 2000, dtype=np.uint32) % 65536).astype(np.uint16).reshape(2000, 2000)
    img = Image.fromarray(a)
    tracemalloc.start()
    rgb = to_rgb(img)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5 * a.size  # the float64 conversion peaked at over 16 bytes a pixel
    assert np.array_equal(np.asarray(rgb)[..., 0], (a // 257).astype(np.uint8))


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"this is not an image", "image_not_decodable"),
        (_jpeg()[: len(_jpeg()) // 2], "image_corrupt"),
        (_png(Image.new("L", (1200, 1000))), "image_too_large"),
    ],
)
def test_rejections_have_reasons(data, reason):
    with pytest.raises(ImageRejected) as e:
        encode(data, CFG)
    assert e.value.reason == reason


def _noise_jpeg(size, mode="RGB") -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_a_jpeg_cut_short_with_an_end_marker_is_corrupt_not_grey(mode):
    """libjpeg fills the missing rows with grey and only warns; Pillow stores the result."""
    whole = _noise_jpeg((160, 120), mode)
    assert encode(whole, CFG).width == 64
    with pytest.raises(ImageRejected) as e:
        encode(whole[: len(whole) // 2] + b"\xff\xd9", CFG)
    assert e.value.reason == "image_corrupt" and "premature end" in e.value.detail


def test_a_jpeg_header_that_claims_more_than_its_data_holds_is_corrupt():
    out = io.BytesIO()
    Image.new("RGB", (6000, 6000), (128, 0, 0)).save(out, format="JPEG", quality=10)
    liar = out.getvalue()[:631] + b"\xff\xd9"  # a 6000x6000 header and 631 bytes in all
    with pytest.raises(ImageRejected) as e:
        encode(liar, ImageConfig(max_side=64))
    assert e.value.reason == "image_corrupt"


def test_large_jpegs_are_scaled_while_decoding_and_keep_their_content():
    stored = encode(_jpeg((1200, 600), color=(10, 200, 10)), CFG)
    assert (stored.width, stored.height) == (64, 32)
    assert np.abs(np.asarray(Image.open(io.BytesIO(stored.jpg))).astype(int) - (10, 200, 10)).max() < 8


def test_boxes_are_scaled_clipped_and_counted():
    stored = StoredImage(b"", 50, 25, (0.5, 0.25), "")
    boxes = [
        {"box": [10, 10, 60, 60], "label": "cat"},  # fine: → [5, 2.5, 30, 15]
        {"box": [-20, -4, 40, 40], "label": "dog"},  # sticks out: clipped
        {"box": [0, 0, math.nan, 10], "label": "x"},
        {"box": [50, 50, 10, 10], "label": "x"},
        {"box": [500, 500, 600, 600], "label": "x"},
        {"box": [0, 0, 1, 1], "label": "x"},  # under a pixel once scaled
        {"box": [0, 0, 10], "label": "x"},
        {"box": [0, 0, 10, 10]},
        "garbage",
    ]
    kept, dropped = map_boxes(boxes, stored, CFG)
    assert kept == [
        {"box": [5.0, 2.5, 30.0, 15.0], "label": "cat"},
        {"box": [0.0, 0.0, 20.0, 10.0], "label": "dog"},
    ]
    assert dropped == {
        "box_not_finite": 1,
        "box_inverted": 1,
        "box_outside": 1,
        "box_degenerate": 1,
        "box_malformed": 1,
        "box_label_invalid": 2,
    }
    assert map_boxes(None, stored, CFG) == ([], {})
    assert map_boxes({"box": 1}, stored, CFG) == ([], {"boxes_not_a_list": 1})


@pytest.mark.parametrize("fmt", ["EPS", "PPM", "ICO", "TGA"])
def test_formats_outside_the_allow_list_are_not_decoded(fmt):
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 10)).save(out, format=fmt)
    with pytest.raises(ImageRejected) as e:
        encode(out.getvalue(), CFG)
    assert e.value.reason == "image_not_decodable" and "JPEG, PNG" in e.value.detail


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_allowed_formats_are_decoded(fmt):
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 10)).save(out, format=fmt)
    assert encode(out.getvalue(), CFG).width == 32


def test_box_labels_over_the_limit_drop_their_box():
    stored = StoredImage(b"", 100, 100, (1.0, 1.0), "")
    cfg = ImageConfig(max_side=64, max_label_chars=10)
    boxes = [{"box": [0, 0, 10, 10], "label": "dot"}, {"box": [0, 0, 10, 10], "label": "x" * 11}]
    kept, dropped = map_boxes(boxes, stored, cfg)
    assert len(kept) == 1 and dropped == {"box_label_too_long": 1}
