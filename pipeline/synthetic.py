"""A generated corpus: the embedded default data and the tests' fixture.

Each image holds a few flat shapes (shape × colour × size, at random positions, possibly
overlapping, on a varied background). Its caption is several sentences long and says true
things about the picture: every object with its attributes, where it sits, and how it
relates to its nearest neighbour. Ground-truth boxes come labelled "<size> <colour> <shape>".

Records are written the way a user's data arrives: ``records.jsonl`` (or ``.parquet``) whose
``image`` field is a path relative to the index, images beside it. ``num_broken`` extra
records are broken on purpose, one kind after another from :data:`BROKEN_KINDS`.
Everything is a function of the config: the same seed writes the same bytes.
"""

from __future__ import annotations

import io
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from pipeline.config import at_least, check_choices

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "orange": (245, 140, 30),
    "purple": (140, 60, 180),
    "pink": (240, 130, 190),
    "black": (20, 20, 20),
    "white": (250, 250, 250),
    "brown": (130, 80, 40),
}
SIZES = {"small": 0.14, "medium": 0.24, "large": 0.36}  # side of the bounding box / shorter image side
_POSITIONS = (
    ("upper left", "top", "upper right"),
    ("middle left", "center", "middle right"),
    ("lower left", "bottom", "lower right"),
)

# Broken on purpose; the data-prep docs say what the job does with each.
BROKEN_KINDS = (
    "corrupt_image",
    "not_an_image",
    "missing_image",
    "zero_pixel_image",
    "decompression_bomb",
    "cmyk_image",
    "palette_image",
    "la_image",
    "sixteen_bit_image",
    "empty_caption",
    "whitespace_caption",
    "non_string_caption",
    "huge_caption",
    "invalid_utf8",
    "bad_boxes",
    "duplicate_id",
    "missing_field",
    "unparseable_line",
)
# A typed Parquet column cannot hold these; the Parquet index skips them.
_JSONL_ONLY = frozenset({"non_string_caption", "invalid_utf8", "unparseable_line"})


@dataclass(frozen=True)
class SyntheticConfig:
    num_records: int = 2000  # good records; the broken ones come on top
    num_broken: int = 0
    seed: int = 0
    split: Literal["train", "heldout"] = "train"  # heldout draws different images from the same seed
    image_size: int = 160  # width; height is this or three quarters of it
    min_objects: int = 2
    max_objects: int = 5
    index_format: Literal["jsonl", "parquet"] = "jsonl"

    def __post_init__(self) -> None:
        check_choices(self)
        at_least(self, 1, "num_records")
        at_least(self, 0, "num_broken")
        at_least(self, 64, "image_size")
        if not 1 <= self.min_objects <= self.max_objects <= len(SHAPES) * len(COLOURS):
            raise ValueError(
                f"min_objects: need 1 <= min_objects <= max_objects, got "
                f"{self.min_objects}, {self.max_objects}"
            )


@dataclass
class CorpusSummary:
    index: str
    records: int  # lines of the index, broken ones included
    good: int
    broken: dict[str, int] = field(default_factory=dict)  # kind → records written
    mean_caption_words: float = 0.0

    def __str__(self) -> str:
        broken = ", ".join(f"{k}={n}" for k, n in self.broken.items()) or "none"
        return (
            f"{self.index}: {self.records} records ({self.good} good, broken: {broken}); "
            f"captions average {self.mean_caption_words:.0f} words"
        )


@dataclass(frozen=True)
class Obj:
    size: str
    colour: str
    shape: str
    box: tuple[int, int, int, int]  # tight bounding box, pixels, x1/y1 exclusive

    @property
    def label(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


def write_corpus(out_dir: str, cfg: SyntheticConfig) -> CorpusSummary:
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records: list[Any] = []
    words = 0
    for i in range(cfg.num_records):
        rng = random.Random(f"{cfg.seed}:{cfg.split}:{i}")
        img, objects, background = draw_scene(rng, cfg)
        caption = describe(rng, objects, background, img.size)
        words += len(caption.split())
        name = f"images/{cfg.split}-{i:06d}.jpg"
        img.save(out / name, format="JPEG", quality=92)
        records.append(
            {
                "id": f"{cfg.split}-{i:06d}",
                "image": name,
                "caption": caption,
                "boxes": [{"box": list(o.box), "label": o.label} for o in objects],
            }
        )

    good_ids = {r["id"] for r in records}
    kinds = [k for k in BROKEN_KINDS if cfg.index_format == "jsonl" or k not in _JSONL_ONLY]
    broken: dict[str, int] = {}
    rng = random.Random(f"{cfg.seed}:{cfg.split}:broken")
    for j in range(cfg.num_broken):
        kind = kinds[j % len(kinds)]
        broken[kind] = broken.get(kind, 0) + 1
        position = rng.randrange(1, len(records) + 1)  # never first: a duplicate needs an original
        original = next(
            r
            for r in reversed(records[:position])
            if isinstance(r, dict) and r.get("id") in good_ids and "image" in r
        )
        records.insert(position, _broken_record(kind, j, out, original, cfg))

    index = out / f"records.{cfg.index_format}"
    if cfg.index_format == "jsonl":
        index.write_bytes(
            b"".join(r if isinstance(r, bytes) else json.dumps(r).encode() + b"\n" for r in records)
        )
    else:
        _write_parquet(index, records)
    return CorpusSummary(
        str(index), len(records), cfg.num_records, dict(sorted(broken.items())), words / cfg.num_records
    )


def draw_scene(rng: random.Random, cfg: SyntheticConfig) -> tuple[Image.Image, list[Obj], str]:
    """A background and ``min..max_objects`` shapes with distinct labels; later ones drawn on top."""
    width = cfg.image_size
    height = rng.choice((cfg.image_size, cfg.image_size * 3 // 4))
    img, background = _background(rng, width, height)
    draw = ImageDraw.Draw(img)
    objects: list[Obj] = []
    labels: set[tuple[str, str]] = set()
    count = rng.randint(cfg.min_objects, cfg.max_objects)
    while len(objects) < count:
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        if (colour, shape) in labels:
            continue
        labels.add((colour, shape))
        size = rng.choice(list(SIZES))
        side = max(8, round(SIZES[size] * min(width, height)))
        x0, y0 = rng.randrange(0, width - side), rng.randrange(0, height - side)
        points = _outline(shape, x0, y0, side)
        fill = COLOURS[colour]
        if shape == "circle":
            draw.ellipse((x0, y0, x0 + side - 1, y0 + side - 1), fill=fill)
        elif shape == "square":
            draw.rectangle((x0, y0, x0 + side - 1, y0 + side - 1), fill=fill)
        else:
            draw.polygon(points, fill=fill)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        objects.append(
            Obj(
                size,
                colour,
                shape,
                (math.floor(min(xs)), math.floor(min(ys)), math.ceil(max(xs)) + 1, math.ceil(max(ys)) + 1),
            )
        )
    return img, objects, background


def describe(rng: random.Random, objects: list[Obj], background: str, size: tuple[int, int]) -> str:
    """A long caption of true sentences: each object, its place, its nearest neighbour."""
    sentences = []
    for i, obj in enumerate(objects):
        place = _place(obj, size)
        others = [o for o in objects if o is not obj]
        if not others:
            sentences.append(
                f"{_a(obj.label).capitalize()} {obj.shape} sits alone in the {place} of the picture."
            )
            continue
        near = min(others, key=lambda o: math.dist(o.center, obj.center))
        relation = _relation(obj, near)
        template = rng.choice(
            (
                "{A} sits in the {place} of the picture, {rel} {b}.",
                "In the {place} there is {a}, which is {rel} {b}.",
                "Toward the {place} we can see {a} placed {rel} {b}.",
                "{A} appears in the {place}, {rel} {b}.",
            )
        )
        sentences.append(
            template.format(
                A=_a(obj.label).capitalize(), a=_a(obj.label), place=place, rel=relation, b=_a(near.label)
            )
        )
        if i > 0 and _overlaps(obj.box, near.box) and objects.index(near) < i:
            sentences.append(f"The {obj.colour} {obj.shape} is drawn over the {near.colour} {near.shape}.")
    biggest = max(objects, key=lambda o: (o.box[2] - o.box[0]) * (o.box[3] - o.box[1]))
    sentences.append(f"The background is {background}.")
    count = len(objects)
    sentences.append(
        f"There {'is one shape' if count == 1 else f'are {count} shapes'} in total, and the "
        f"biggest of them is the {biggest.colour} {biggest.shape}."
    )
    sentences.append("Every shape is drawn in a flat colour with crisp edges and no shadow.")
    return " ".join(sentences)


def _background(rng: random.Random, width: int, height: int) -> tuple[Image.Image, str]:
    kind = rng.choice(("plain", "gradient", "stripes", "noise"))
    tone = rng.choice(
        (
            ("pale grey", (205, 205, 205)),
            ("light beige", (235, 225, 200)),
            ("soft teal", (170, 210, 205)),
            ("dark slate", (60, 70, 80)),
        )
    )
    name, rgb = tone
    base = np.array(rgb, dtype=np.float32)
    if kind == "plain":
        pixels = np.broadcast_to(base, (height, width, 3))
        text = f"a plain {name} colour"
    elif kind == "gradient":
        ramp = np.linspace(0.7, 1.15, height, dtype=np.float32)[:, None, None]
        pixels = np.broadcast_to(base * ramp, (height, width, 3))
        text = f"a {name} gradient that grows lighter toward the bottom"
    elif kind == "stripes":
        rows = ((np.arange(height) // 8) % 2).astype(np.float32)[:, None, None]
        pixels = np.broadcast_to(base * (0.85 + 0.15 * rows), (height, width, 3))
        text = f"{name} with faint horizontal stripes"
    else:
        noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 12, (height, width, 1))
        pixels = base + noise.astype(np.float32)
        text = f"a grainy {name} texture"
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB"), text


def _outline(shape: str, x0: int, y0: int, side: int) -> list[tuple[float, float]]:
    """Polygon points of a shape inscribed in the square (x0, y0, side); the box is their hull."""
    cx, cy, r = x0 + (side - 1) / 2, y0 + (side - 1) / 2, (side - 1) / 2
    if shape in ("circle", "square"):
        return [(x0, y0), (x0 + side - 1, y0 + side - 1)]
    if shape == "triangle":
        return [(cx, y0), (x0 + side - 1, y0 + side - 1), (x0, y0 + side - 1)]
    if shape == "diamond":
        return [(cx, y0), (x0 + side - 1, cy), (cx, y0 + side - 1), (x0, cy)]
    if shape == "hexagon":
        return [(cx + r * math.cos(math.pi / 3 * k), cy + r * math.sin(math.pi / 3 * k)) for k in range(6)]
    return [
        (
            cx + (r if k % 2 == 0 else r * 0.45) * math.sin(math.pi / 5 * k),  # star, tip up
            cy - (r if k % 2 == 0 else r * 0.45) * math.cos(math.pi / 5 * k),
        )
        for k in range(10)
    ]


def _place(obj: Obj, size: tuple[int, int]) -> str:
    cx, cy = obj.center
    return _POSITIONS[min(2, int(3 * cy / size[1]))][min(2, int(3 * cx / size[0]))]


def _relation(obj: Obj, other: Obj) -> str:
    a, b = obj.box, other.box
    if b[0] <= a[0] and b[1] <= a[1] and a[2] <= b[2] and a[3] <= b[3]:
        return "inside"
    if _overlaps(a, b):
        return "overlapping"
    dx, dy = obj.center[0] - other.center[0], obj.center[1] - other.center[1]
    if abs(dy) >= abs(dx):
        return "just above" if dy < 0 else "just below"
    return "to the left of" if dx < 0 else "to the right of"


def _overlaps(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _a(label: str) -> str:
    return ("an " if label[0] in "aeiou" else "a ") + label


def _broken_record(kind: str, j: int, out: Path, original: dict, cfg: SyntheticConfig) -> dict | bytes:
    """One record broken in the way ``kind`` names; a valid record is the starting point."""
    rid = f"{cfg.split}-broken-{j:04d}-{kind}"
    record = {
        "id": rid,
        "image": original["image"],
        "caption": original["caption"],
        "boxes": original["boxes"],
    }

    source = out / original["image"]
    if kind in _BROKEN_IMAGES:
        data, suffix = _BROKEN_IMAGES[kind](source)
        record["image"] = f"images/{rid}.{suffix}"
        (out / record["image"]).write_bytes(data)
    elif kind == "missing_image":
        record["image"] = f"images/{rid}-not-there.jpg"
    elif kind == "empty_caption":
        record["caption"] = ""
    elif kind == "whitespace_caption":
        record["caption"] = " \n\t  "
    elif kind == "non_string_caption":
        record["caption"] = ["a", "list", "of", "words"]
    elif kind == "huge_caption":
        record["caption"] = ("A red circle. " * (2**20 // 14 + 1))[: 2**20]  # 1 MiB
    elif kind == "invalid_utf8":
        return json.dumps(record).encode().replace(b'"caption": "', b'"caption": "\xff\xfe', 1) + b"\n"
    elif kind == "bad_boxes":  # the record stays; each bad box is dropped and counted
        w, h = Image.open(source).size
        record["boxes"] = original["boxes"] + [
            {"box": [-50, -50, -10, -10], "label": "small red circle"},
            {"box": [w * 2, 0, w * 3, h], "label": "large blue square"},
            {"box": [30, 30, 10, 10], "label": "small green star"},
            {"box": [0, 0, float("nan"), 10], "label": "medium pink diamond"},
            {"box": [1, 2, 3], "label": "large black hexagon"},
            {"box": [5, 5, 20, 20], "label": ""},
        ]
    elif kind == "duplicate_id":
        record["id"] = original["id"]
    elif kind == "missing_field":
        del record["image"]
    elif kind == "unparseable_line":
        return b'{"id": "' + rid.encode() + b'", "image": "images/x.jpg", "caption": "cut off\n'
    else:
        raise ValueError(f"unknown broken kind {kind!r}")
    return record


def _sixteen_bit(source: Path) -> bytes:
    grey = np.asarray(Image.open(source).convert("L"), dtype=np.uint16) * 257
    return _encode(Image.fromarray(grey), "PNG")


# broken kind → (a valid record's JPEG → the broken file's bytes, its suffix)
_BROKEN_IMAGES: dict[str, Callable[[Path], tuple[bytes, str]]] = {
    "corrupt_image": lambda src: (src.read_bytes()[: src.stat().st_size // 2], "jpg"),
    "not_an_image": lambda src: (b"<html><body>404 Not Found</body></html>\n", "jpg"),
    "zero_pixel_image": lambda src: (b"", "jpg"),  # a download that stopped before its first byte
    "decompression_bomb": lambda src: (
        _encode(Image.new("1", (8000, 6000)), "PNG"),
        "png",
    ),  # 48 MP, a few kB
    "cmyk_image": lambda src: (_encode(Image.open(src).convert("CMYK"), "JPEG"), "jpg"),
    "palette_image": lambda src: (_encode(Image.open(src).convert("P"), "PNG"), "png"),
    "la_image": lambda src: (_encode(Image.open(src).convert("LA"), "PNG"), "png"),
    "sixteen_bit_image": lambda src: (_sixteen_bit(src), "png"),
}


def _encode(img: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def _write_parquet(path: Path, records: list[dict]) -> None:
    box = pa.struct([("box", pa.list_(pa.float64())), ("label", pa.string())])
    schema = pa.schema(
        [("id", pa.string()), ("image", pa.string()), ("caption", pa.string()), ("boxes", pa.list_(box))]
    )
    rows = [
        {
            "id": r.get("id"),
            "image": r.get("image"),
            "caption": r.get("caption"),
            "boxes": [
                {"box": [float(v) for v in b["box"]] if len(b["box"]) == 4 else b["box"], "label": b["label"]}
                for b in r.get("boxes") or []
            ],
        }
        for r in records
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
