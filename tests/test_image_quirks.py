"""Images as people have them: each converted by a documented rule and counted, or dropped with a
reason (pipeline/prep/images.py). Every image is made here with Pillow; boxes are checked against
the stored pixels, not against the code's own arithmetic."""

import hashlib
import io
import json
import os
import re
import tarfile

import numpy as np
import pytest
from helpers import REPO
from PIL import Image, ImageOps

from pipeline import storage
from pipeline.config import load_config
from pipeline.prep.coco import read_coco
from pipeline.prep.config import ImageConfig, PrepConfig
from pipeline.prep.images import encode, map_boxes
from pipeline.prep.index import validate
from pipeline.prep.records import InputRecord
from pipeline.prep.worker import ShardTask, ShardWorker

ORIENTATION, MAKE = 0x0112, 0x010F  # EXIF tags
CFG = ImageConfig(max_side=64, jpeg_quality=90, max_pixels=1_000_000)
RED, GREY = (220, 20, 20), (128, 128, 128)
SHOWN = (120, 80)  # the displayed size of the rotated photos
BOX = [70, 8, 110, 32]  # where the red rectangle is, displayed: in a corner, so a wrong turn misses it
# The transpose that makes the raw pixels of a photo shown by EXIF orientation n (the inverse of
# what a viewer applies: Pillow's rotations are counter-clockwise).
UNDO = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def _saved(img: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **options)
    return out.getvalue()


def _exif(tag: int, value) -> Image.Exif:
    exif = Image.Exif()
    exif[tag] = value
    return exif


def _gradient(size=(96, 72)) -> Image.Image:
    """A smooth test card: every pixel different, no randomness (its bytes never change)."""
    x, y = np.meshgrid(np.linspace(0, 255, size[0]), np.linspace(0, 255, size[1]))
    return Image.fromarray(np.stack([x, y, (x + y) / 2], axis=2).astype(np.uint8))


def _displayed() -> Image.Image:
    """What a person sees: grey, with a red rectangle at BOX."""
    a = np.full((SHOWN[1], SHOWN[0], 3), GREY, dtype=np.uint8)
    a[BOX[1] : BOX[3], BOX[0] : BOX[2]] = RED
    return Image.fromarray(a)


def _photo(orientation: int, fmt: str = "JPEG") -> tuple[bytes, Image.Image]:
    """A photo as a camera writes it: raw pixels turned, and the EXIF orientation that turns them
    back. Returns its bytes and its raw pixels."""
    raw = _displayed().transpose(UNDO[orientation])
    return _saved(raw, fmt, exif=_exif(ORIENTATION, orientation)), raw


def _red(pixels: np.ndarray) -> np.ndarray:
    return (pixels[..., 0] > 150) & (pixels[..., 1] < 90) & (pixels[..., 2] < 90)


def _pixels(jpg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"))


def _on_red(pixels: np.ndarray, box: list[float]) -> tuple[float, float]:
    """The red fraction inside ``box`` (its edges left aside: JPEG blurs them) and outside it."""
    x0, y0, x1, y1 = (round(v) for v in box)
    red = _red(pixels)
    inside = red[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].mean()
    outside = red.copy()
    outside[max(y0 - 2, 0) : y1 + 2, max(x0 - 2, 0) : x1 + 2] = False
    return float(inside), float(outside.sum() / red.size)


# sha256 (first 16 hex digits) of the stored JPEG, as the code before EXIF orientation made it
# (Pillow 13.0.0 and its libjpeg-turbo: a different Pillow may encode other bytes).
BEFORE = {
    "jpeg_rgb": "e1eaeb479f51ffc2",
    "jpeg_rgb_small": "ff12cfa2ae70d6d4",
    "jpeg_exif_orientation_1": "5e37eadc7e41aaf2",
    "jpeg_exif_other_tags": "5e37eadc7e41aaf2",
    "jpeg_l": "4f21270e5311edc6",
    "jpeg_cmyk": "ab622d310f3fec0e",
    "png_rgb": "34fcd10e93f46a42",
    "png_rgba": "34fcd10e93f46a42",
    "gif": "162343fab88afda7",
    "webp": "f839fa55a9708475",
}
FIXED = {
    "jpeg_rgb": lambda: _saved(_gradient((200, 100)), "JPEG", quality=95),
    "jpeg_rgb_small": lambda: _saved(_gradient(), "JPEG", quality=95),
    "jpeg_exif_orientation_1": lambda: _saved(_gradient((200, 100)), "JPEG", exif=_exif(ORIENTATION, 1)),
    "jpeg_exif_other_tags": lambda: _saved(_gradient((200, 100)), "JPEG", exif=_exif(MAKE, "Camera")),
    "jpeg_l": lambda: _saved(_gradient().convert("L"), "JPEG"),
    "jpeg_cmyk": lambda: _saved(_gradient().convert("CMYK"), "JPEG"),
    "png_rgb": lambda: _saved(_gradient(), "PNG"),
    "png_rgba": lambda: _saved(_gradient().convert("RGBA"), "PNG"),
    "gif": lambda: _saved(_gradient().convert("P"), "GIF"),
    "webp": lambda: _saved(_gradient(), "WEBP", quality=80),
}


@pytest.mark.parametrize("name", sorted(FIXED))
def test_images_that_worked_before_are_stored_byte_identical(name):
    stored = encode(FIXED[name](), CFG)
    assert hashlib.sha256(stored.jpg).hexdigest()[:16] == BEFORE[name]
    assert stored.orientation == 1 and stored.animated == ""


@pytest.mark.parametrize("orientation", [0, 9, 65535])
def test_an_orientation_out_of_range_is_ignored(orientation):
    """As viewers do: the pixels are shown as stored."""
    stored = encode(_saved(_gradient((200, 100)), "JPEG", exif=_exif(ORIENTATION, orientation)), CFG)
    assert hashlib.sha256(stored.jpg).hexdigest()[:16] == BEFORE["jpeg_exif_orientation_1"]
    assert stored.repairs == []


@pytest.mark.parametrize("orientation, fmt", [(n, "JPEG") for n in range(2, 9)] + [(6, "PNG"), (8, "WEBP")])
def test_exif_orientation_is_applied_and_a_displayed_box_lands_on_its_object(orientation, fmt):
    data, _ = _photo(orientation, fmt)
    shown = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))  # the fixture shows BOX red
    assert shown.size == SHOWN and _on_red(np.asarray(shown.convert("RGB")), BOX) == (1.0, 0.0)
    stored = encode(data, CFG)
    assert (stored.width, stored.height) == (64, 43)  # the displayed size, capped at 64
    assert stored.repairs == [f"exif_orientation:{orientation}"]
    kept, dropped = map_boxes([{"box": BOX, "label": "red rectangle"}], stored, CFG)
    assert dropped == {}
    inside, outside = _on_red(_pixels(stored.jpg), kept[0]["box"])
    assert inside > 0.95 and outside < 0.01


def _raw_box(raw: Image.Image) -> list[int]:
    """Where the red rectangle is in the raw pixels, found in them."""
    ys, xs = np.nonzero(_red(np.asarray(raw)))
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_boxes_of_a_record_that_declares_the_raw_size_are_mapped_from_the_raw_frame(orientation):
    data, raw = _photo(orientation)
    stored = encode(data, CFG)
    boxes = [{"box": _raw_box(raw), "label": "red rectangle"}]
    declared = (raw.width, raw.height)  # what a tool that ignored EXIF wrote
    kept, _ = map_boxes(boxes, stored, CFG, declared)
    inside, outside = _on_red(_pixels(stored.jpg), kept[0]["box"])
    assert inside > 0.95 and outside < 0.01
    taken_as_displayed, _ = map_boxes(boxes, stored, CFG)  # without the declaration: elsewhere
    assert _on_red(_pixels(stored.jpg), taken_as_displayed[0]["box"])[0] < 0.5


def test_boxes_of_a_record_that_declares_the_displayed_size_stay_in_the_displayed_frame():
    stored = encode(_photo(6)[0], CFG)
    declared = SHOWN
    kept, _ = map_boxes([{"box": BOX, "label": "red rectangle"}], stored, CFG, declared)
    inside, outside = _on_red(_pixels(stored.jpg), kept[0]["box"])
    assert inside > 0.95 and outside < 0.01


def _stored_colour(data: bytes, cfg: ImageConfig = CFG) -> tuple[np.ndarray, list[str]]:
    stored = encode(data, cfg)
    return _pixels(stored.jpg).reshape(-1, 3).astype(int), stored.repairs


def test_a_cmyk_jpeg_is_stored_as_rgb_in_its_colours():
    pixels, repairs = _stored_colour(_saved(Image.new("RGB", (40, 30), RED).convert("CMYK"), "JPEG"))
    assert np.abs(pixels - RED).max() < 12
    assert repairs == ["mode:CMYK"]


def test_a_sixteen_bit_png_is_scaled_to_eight_bits_not_clipped():
    levels = np.array([0, 8192, 32768, 65535], dtype=np.uint16)
    data = _saved(Image.fromarray(np.repeat(np.repeat(levels[None, :], 16, 0), 16, 1)), "PNG")
    pixels, repairs = _stored_colour(data)
    grey = pixels.reshape(16, 64, 3)[8, 8::16, 0]  # the middle of each level's band
    assert np.abs(grey - levels // 257).max() <= 2  # 0, 32, 128, 255: mid grey is not white
    assert repairs == ["mode:I;16"]


def test_la_with_transparency_is_composited_on_white():
    a = np.zeros((20, 30, 2), dtype=np.uint8)
    a[..., 0] = 60
    a[:, 10:20, 1] = 128  # half transparent
    a[:, 20:, 1] = 255  # opaque
    pixels, repairs = _stored_colour(_saved(Image.fromarray(a, "LA"), "PNG"))
    row = pixels.reshape(20, 30, 3)[10, [5, 15, 25], 0]
    assert np.abs(row - [255, 158, 60]).max() <= 4  # white, halfway, the grey itself
    assert repairs == ["mode:LA"]


def test_a_palette_image_with_a_transparent_colour_is_composited_on_white():
    img = Image.new("P", (30, 20), 1)
    img.putpalette([*RED, *GREY] + [0] * 762)
    img.paste(0, (0, 0, 15, 20))  # the left half red, then made transparent
    pixels, repairs = _stored_colour(_saved(img, "PNG", transparency=0))
    left, right = pixels.reshape(20, 30, 3)[10, [5, 25]]
    assert np.abs(left - 255).max() <= 4 and np.abs(right - GREY).max() <= 4
    assert repairs == ["mode:P"]


def _animation(fmt: str) -> bytes:
    frames = [Image.new("RGB", (32, 24), colour) for colour in (RED, (20, 20, 220), (20, 220, 20))]
    return _saved(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)


@pytest.mark.parametrize("fmt, mode", [("GIF", "mode:P"), ("WEBP", ""), ("PNG", "")])
def test_an_animated_image_is_stored_as_its_first_frame(fmt, mode):
    pixels, repairs = _stored_colour(_animation(fmt))
    assert np.abs(pixels - RED).max() < 40  # GIF's palette is coarse
    assert repairs == [r for r in (mode, f"first_frame:{fmt}") if r]


def test_a_gif_whose_second_frame_is_cut_short_keeps_its_first_uncounted():
    """Pillow raises finding the second frame; the first, as stored before, is what is kept."""
    data = _animation("GIF")
    second = [m.start() for m in re.finditer(b"\x21\xf9\x04", data)][1]  # its graphic control block
    pixels, repairs = _stored_colour(data[: second + 8 + 5])  # cut inside its image descriptor
    assert np.abs(pixels - RED).max() < 40
    assert repairs == ["mode:P"]


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> ShardWorker:
    root = tmp_path_factory.mktemp("quirks")
    cfg = load_config(
        PrepConfig,
        REPO / "configs/prep/default.yaml",
        [f"input.index={root}/index.jsonl", f"output={root}/out", "image.max_side=64"],
    )
    return ShardWorker(cfg, cfg.output, "quirks", run_id="")


def test_a_shard_counts_each_conversion_and_drops_bad_paths_with_reasons(worker, tmp_path):
    files = {
        "plain": _saved(_displayed(), "JPEG"),
        "turned": _photo(6)[0],
        "cmyk_turned": _saved(
            _displayed().transpose(UNDO[8]).convert("CMYK"), "JPEG", exif=_exif(ORIENTATION, 8)
        ),
        "animated": _animation("GIF"),
    }
    records = []
    for name, data in files.items():
        (tmp_path / f"{name}.img").write_bytes(data)
        box = [{"box": BOX, "label": "red rectangle"}]
        records.append(
            InputRecord(len(records), name, str(tmp_path / f"{name}.img"), "A red rectangle.", box)
        )
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "two\nlines.jpg").write_bytes(files["plain"])
    for name, path in (("folder", "folder.jpg"), ("newline", "two\nlines.jpg")):
        records.append(InputRecord(len(records), name, str(tmp_path / path), "A red rectangle.", None))

    result = worker.process(ShardTask(0, records))

    fates = {d.id: (d.reason, d.detail) for d in result.drops}
    assert fates["folder"] == ("image_unreadable", f"a directory, not a file: {tmp_path / 'folder.jpg'}")
    assert fates["newline"][0] == "image_path_invalid" and "two\\nlines.jpg" in fates["newline"][1]
    assert len(fates) == 2 and result.stats.samples == 4  # the job goes on
    assert result.stats.repaired == 3  # samples; cmyk_turned has two repairs
    assert result.stats.repaired_by_reason == {
        "exif_orientation:6": 1,
        "exif_orientation:8": 1,
        "mode:CMYK": 1,
        "mode:P": 1,
        "first_frame:GIF": 1,
    }
    with tarfile.open(f"{worker.root}/{result.stats.name}") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    for key in (k[: -len(".json")] for k in members if k.endswith(".json")):
        sample = json.loads(members[f"{key}.json"])
        if sample["id"] in ("plain", "turned", "cmyk_turned"):
            assert (sample["width"], sample["height"]) == (64, 43)
            inside, outside = _on_red(_pixels(members[f"{key}.jpg"]), sample["regions"][0]["box"])
            assert inside > 0.95 and outside < 0.01, sample["id"]


@pytest.mark.parametrize("orientation", [6, 8])
def test_coco_and_an_index_declaring_the_raw_size_put_raw_frame_boxes_on_their_object(
    worker, tmp_path, orientation
):
    """COCO's ``images`` entries and an index row's ``width``/``height`` declare the size; where it
    is the raw one, the boxes (drawn on the raw pixels) are mapped onto the displayed image."""
    data, raw = _photo(orientation)
    (tmp_path / "turned.jpg").write_bytes(data)
    x0, y0, x1, y1 = _raw_box(raw)
    image = {"id": 7, "file_name": "turned.jpg", "width": raw.width, "height": raw.height}
    captions = {"images": [image], "annotations": [{"image_id": 7, "caption": "a red rectangle"}]}
    instances = {
        "annotations": [{"image_id": 7, "bbox": [x0, y0, x1 - x0, y1 - y0], "category_id": 1}],
        "categories": [{"id": 1, "name": "red rectangle"}],
    }
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    [from_coco] = read_coco(
        str(tmp_path / "captions.json"), str(tmp_path / "instances.json"), str(tmp_path), 10_000
    )
    row = {
        "id": "row",
        "image": "turned.jpg",
        "caption": "A red rectangle.",
        "width": raw.width,
        "height": raw.height,
    }
    from_index = validate(
        {**row, "boxes": [{"box": [x0, y0, x1, y1], "label": "red rectangle"}]}, 1, str(tmp_path), 10_000
    )
    assert from_coco.declared_size == from_index.declared_size == (raw.width, raw.height)

    result = worker.process(ShardTask(0, [from_coco, from_index]))
    with tarfile.open(f"{worker.root}/{result.stats.name}") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    for key in (k[: -len(".json")] for k in members if k.endswith(".json")):
        sample = json.loads(members[f"{key}.json"])
        inside, outside = _on_red(_pixels(members[f"{key}.jpg"]), sample["regions"][0]["box"])
        assert inside > 0.95 and outside < 0.01, sample["id"]
    assert result.stats.samples == 2


def test_reading_a_folder_as_an_image_leaks_no_descriptor(tmp_path):
    """A worker meets many such paths in a bad index: each refused read must close what it opened,
    or the worker runs out of descriptors and drops every later record."""
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(100):
        with pytest.raises(IsADirectoryError, match="a directory, not a file"):
            storage.read_bytes(str(tmp_path), limit=1000)
    assert len(os.listdir("/proc/self/fd")) == before
