"""Sample schema (version 1): the contract between data prep, training and other teams.

One WebDataset sample per image, keyed by a stable hash of (source, source id):

- ``jpg``: the image, re-encoded RGB JPEG.
- ``json``: :class:`Sample` as JSON (see ``docs/schema.md`` for the field table).

Boxes are ``[x0, y0, x1, y1]`` in pixels of the stored jpg, clipped to the image and
non-degenerate; phrase ``start``/``end`` are character offsets into ``caption``; a phrase
links to at most one region, a region may serve several phrases.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1

PHRASE_KINDS = ("noun_chunk", "relation", "spatial")  # in this order: reading order's tie break


class SchemaError(ValueError):
    """A sample that does not conform to the schema."""


@dataclass(frozen=True)
class Phrase:
    text: str
    sentence: int  # index into Sample.sentences
    start: int  # character offsets into Sample.caption
    end: int
    kind: str  # one of PHRASE_KINDS
    region: int | None = None  # index into Sample.regions


@dataclass(frozen=True)
class Region:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in stored-image pixels
    score: float
    source: str  # "annotation" or the grounder's name
    label: str = ""


@dataclass(frozen=True)
class Sample:
    id: str
    source: str
    width: int
    height: int
    caption: str
    sentences: list[str]
    phrases: list[Phrase]
    regions: list[Region]
    origin: dict[str, Any] | None = None  # the input's own metadata (img2dataset's url, sha256, ...)
    schema: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        """The shard's ``json`` part, keys in field order: ``asdict``'s dict, built field by field
        (``asdict`` deep-copies every value: 6% of a prep worker's time)."""
        return {
            "id": self.id,
            "source": self.source,
            "width": self.width,
            "height": self.height,
            "caption": self.caption,
            "sentences": list(self.sentences),
            "phrases": [dict(vars(p)) for p in self.phrases],
            "regions": [{**vars(r), "box": list(r.box)} for r in self.regions],
            "origin": None if self.origin is None else dict(self.origin),
            "schema": self.schema,
        }

    @classmethod
    def parse(cls, raw: bytes | str) -> Sample:
        """A shard's ``json`` part, for every reader of shards. Raises :class:`SchemaError`
        naming the field at fault, or ``json.loads``'s ValueError or RecursionError for bytes
        that are not JSON: others' files, so any of these is bad data, never a bug."""
        return cls.from_json(json.loads(raw))

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Sample:
        """Parse and validate one sample's JSON (any JSON value: it comes from others' files);
        raises SchemaError naming the bad field."""
        _require_object(d, "sample")
        _require(d, "schema", int)
        if d["schema"] != SCHEMA_VERSION:
            raise SchemaError(f"schema: version {d['schema']} is not {SCHEMA_VERSION}")
        for name, typ in (
            ("id", str),
            ("source", str),
            ("width", int),
            ("height", int),
            ("caption", str),
            ("sentences", list),
            ("phrases", list),
            ("regions", list),
        ):
            _require(d, name, typ)
        regions = [_region(r, i, d["width"], d["height"]) for i, r in enumerate(d["regions"])]
        phrases = [
            _phrase(p, i, d["caption"], len(d["sentences"]), len(regions)) for i, p in enumerate(d["phrases"])
        ]
        if not all(isinstance(s, str) for s in d["sentences"]):
            raise SchemaError("sentences: every entry must be a string")
        if not isinstance(d.get("origin"), dict | None):
            raise SchemaError("origin: must be an object or null")
        return cls(
            id=d["id"],
            source=d["source"],
            width=d["width"],
            height=d["height"],
            caption=d["caption"],
            sentences=list(d["sentences"]),
            phrases=phrases,
            regions=regions,
            origin=d.get("origin"),
        )


def sample_key(source: str, source_id: str) -> str:
    """Stable WebDataset key: a rerun over the same inputs writes the same keys."""
    return hashlib.sha1(f"{source}\x00{source_id}".encode()).hexdigest()[:20]


def box_numbers(box: Any) -> tuple[float, float, float, float] | str:
    """A box's four numbers as floats, or why it has none: ``box_malformed`` (not four ints or
    floats) or ``box_not_finite`` (NaN, inf, or an int beyond any float)."""
    if (
        not isinstance(box, (list, tuple))
        or len(box) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
    ):
        return "box_malformed"
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except OverflowError:
        return "box_not_finite"
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return "box_not_finite"
    return x0, y0, x1, y1


def clean_box(box: Any, width: int, height: int) -> tuple[tuple[float, float, float, float] | None, str]:
    """Clip a box to the image; return (box, "") or (None, reason) for one that cannot be used.

    Reasons: those of :func:`box_numbers`, ``box_inverted`` (x1 < x0 or y1 < y0),
    ``box_outside`` (no overlap with the image), ``box_degenerate`` (under one pixel wide or high
    after clipping). A box that merely sticks out of the image is clipped and kept.
    """
    numbers = box_numbers(box)
    if isinstance(numbers, str):
        return None, numbers
    x0, y0, x1, y1 = numbers
    if x1 < x0 or y1 < y0:
        return None, "box_inverted"
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        return None, "box_outside"
    x0, y0 = max(0.0, x0), max(0.0, y0)
    x1, y1 = min(float(width), x1), min(float(height), y1)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None, "box_degenerate"
    return (x0, y0, x1, y1), ""


def _require_object(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise SchemaError(f"{where}: expected an object, got {type(value).__name__}")


def _require(d: dict[str, Any], name: str, typ: type) -> None:
    if name not in d:
        raise SchemaError(f"{name}: missing")
    value = d[name]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise SchemaError(f"{name}: expected {typ.__name__}, got {type(value).__name__}")


def _region(r: dict[str, Any], i: int, width: int, height: int) -> Region:
    _require_object(r, f"regions[{i}]")
    for name, typ in (("box", list), ("score", (int, float)), ("source", str), ("label", str)):
        if name not in r or not isinstance(r[name], typ):
            raise SchemaError(f"regions[{i}].{name}: missing or wrong type")
    box, reason = clean_box(r["box"], width, height)
    if box is None or box != tuple(float(v) for v in r["box"]):
        raise SchemaError(
            f"regions[{i}].box: {r['box']} is not a clipped, non-degenerate box"
            f"{' (' + reason + ')' if reason else ''}"
        )
    try:
        score = float(r["score"])
    except OverflowError:  # an int of hundreds of digits: from_json raises SchemaError only
        raise SchemaError(f"regions[{i}].score: an int beyond any float") from None
    return Region(box=box, score=score, source=r["source"], label=r["label"])


def _phrase(p: dict[str, Any], i: int, caption: str, n_sentences: int, n_regions: int) -> Phrase:
    _require_object(p, f"phrases[{i}]")
    for name, typ in (("text", str), ("sentence", int), ("start", int), ("end", int), ("kind", str)):
        if name not in p or not isinstance(p[name], typ):
            raise SchemaError(f"phrases[{i}].{name}: missing or wrong type")
    if not 0 <= p["start"] < p["end"] <= len(caption) or caption[p["start"] : p["end"]] != p["text"]:
        raise SchemaError(f"phrases[{i}]: offsets [{p['start']}, {p['end']}) do not index its text")
    if not 0 <= p["sentence"] < n_sentences:
        raise SchemaError(f"phrases[{i}].sentence: {p['sentence']} out of range")
    if p["kind"] not in PHRASE_KINDS:
        raise SchemaError(f"phrases[{i}].kind: {p['kind']!r} is not one of {PHRASE_KINDS}")
    region = p.get("region")
    if region is not None and not (isinstance(region, int) and 0 <= region < n_regions):
        raise SchemaError(f"phrases[{i}].region: {region!r} is not a region index")
    return Phrase(
        text=p["text"], sentence=p["sentence"], start=p["start"], end=p["end"], kind=p["kind"], region=region
    )
