"""Input records, and the reader of our own index (JSONL or Parquet).

Every input format (this index, WebDataset tars in ``tars.py``, COCO in ``coco.py``) is read
into the same stream of :class:`InputRecord` or :class:`Drop`, in a fixed order whose
positions are the ordinals. Everything that can be checked without touching the image is
checked there, on the driver, so that duplicate ids are caught with one pass over the input
and no worker wastes time on a record we cannot use.

An index row is ``{"id", "image", "caption", "boxes"?}``; ``image`` is a path relative to
the index's folder (or absolute, or a URL), ``boxes`` a list of ``{"box": [x0, y0, x1, y1],
"label": str}`` in pixels of the original image.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from pipeline import storage
from pipeline.config import BadInput

REQUIRED_FIELDS = ("id", "image", "caption")


@dataclass(frozen=True)
class InputRecord:
    """One sample to prepare. The image reference, the one format the image stage reads, is
    ``image`` (a URL) with ``image_offset``/``image_size``: the image's bytes inside that file
    (a tar member); ``image_size == -1`` means the whole file is the image."""

    ordinal: int  # 0-based position in the input: the record's identity within this input
    id: str
    image: str
    caption: str
    boxes: Any  # as given (validated per box later, against the decoded image size)
    image_offset: int = 0
    image_size: int = -1
    boxes_cut: int = 0  # input boxes after the first image.max_boxes: counted, never carried


@dataclass(frozen=True)
class Drop:
    """An input that was not written, and why. ``dropped.parquet`` holds one row per drop."""

    ordinal: int
    id: str | None
    reason: str
    detail: str = ""


def index_format(url: str) -> str:
    for suffix, fmt in ((".jsonl", "jsonl"), (".json", "jsonl"), (".parquet", "parquet")):
        if url.endswith(suffix):
            return fmt
    raise BadInput(f"input.index: {url} is neither .jsonl nor .parquet")


def read_index(url: str, max_caption_chars: int) -> Iterator[InputRecord | Drop]:
    """Every row of the index, in order, as a valid record or a drop; duplicate ids are dropped."""
    base = storage.parent(url)
    yield from unique_ids(
        row if isinstance(row, Drop) else validate(row, ordinal, base, max_caption_chars)
        for ordinal, row in enumerate(_rows(url))
    )


def unique_ids(items: Iterable[InputRecord | Drop]) -> Iterator[InputRecord | Drop]:
    """The first record with an id is kept; a later one is dropped (ids key the samples)."""
    seen: set[str] = set()
    for item in items:
        if isinstance(item, InputRecord):
            if item.id in seen:
                item = Drop(item.ordinal, item.id, "duplicate_id", "an earlier input has this id")
            else:
                seen.add(item.id)
        yield item


def is_text(value: Any) -> bool:
    """A string that is valid Unicode: no lone surrogate, from a byte that was not UTF-8 or a
    ``"\\ud800"`` escape in valid JSON, which no UTF-8 file (a tar, dropped.parquet) can hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def caption_problem(caption: Any, max_caption_chars: int) -> tuple[str, str] | None:
    """(reason, detail) when a caption cannot be used, whatever format it came in."""
    if not isinstance(caption, str):
        return "caption_not_string", type(caption).__name__
    if not is_text(caption):
        return "invalid_utf8", "caption"
    if not caption.strip():
        return "caption_empty", ""
    if len(caption) > max_caption_chars:
        return "caption_too_long", f"{len(caption)} > {max_caption_chars} characters"
    return None


def record_id(value: Any) -> str | None:
    """An id as the samples carry it: ints as strings; anything else has none."""
    return str(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else None


def as_sentence(text: str) -> str:
    """A short text (a COCO caption, a Visual Genome phrase) as a sentence of its own:
    whitespace collapsed, capitalised, ended with a full stop unless it has final punctuation."""
    text = " ".join(text.split())
    if not text:
        return ""
    return text[0].upper() + text[1:] + ("" if text[-1] in ".!?" else ".")


def xywh_to_xyxy(bbox: Any) -> Any:
    """COCO's ``[x, y, w, h]`` → ``[x0, y0, x1, y1]``; anything else as given (dropped as malformed)."""
    if (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
    ):
        x, y, w, h = bbox
        return [x, y, x + w, y + h]
    return bbox


def validate(row: Any, ordinal: int, base_dir: str, max_caption_chars: int) -> InputRecord | Drop:
    if not isinstance(row, dict):
        return Drop(ordinal, None, "unparseable_record", f"expected an object, got {type(row).__name__}")
    raw_id = row.get("id")
    rid = record_id(raw_id)
    for name in REQUIRED_FIELDS:
        if row.get(name) is None and not (name == "caption" and name in row):
            return Drop(ordinal, rid, "missing_field", name)
    if rid is None or not rid.strip():
        return Drop(ordinal, None, "invalid_id", repr(raw_id)[:200])
    if not is_text(rid):
        return Drop(ordinal, None, "invalid_utf8", f"id {rid!a}"[:200])
    if not isinstance(row["image"], str) or not row["image"].strip():
        return Drop(ordinal, rid, "invalid_image_ref", repr(row["image"])[:200])
    if not is_text(row["image"]):
        return Drop(ordinal, rid, "invalid_utf8", "image")
    problem = caption_problem(row["caption"], max_caption_chars)
    if problem:
        return Drop(ordinal, rid, *problem)
    return InputRecord(
        ordinal, rid, storage.resolve(base_dir, row["image"]), row["caption"], row.get("boxes")
    )


def count_index_rows(url: str) -> int:
    """The index's rows, as ``read_index`` numbers them (non-blank lines), without parsing them."""
    with storage.open_read(url) as f:
        if index_format(url) == "parquet":
            return pq.ParquetFile(f).metadata.num_rows
        return sum(1 for line in f if line.strip())


def _rows(url: str) -> Iterator[dict | Drop]:
    fmt = index_format(url)
    with storage.open_read(url) as f:
        if fmt == "parquet":
            for batch in pq.ParquetFile(f).iter_batches(batch_size=4096):
                yield from batch.to_pylist()
            return
        ordinal = 0
        for line in f:
            if line.strip():
                yield _parse_line(line, ordinal)
                ordinal += 1


def _parse_line(line: bytes, ordinal: int) -> dict | Drop:
    try:
        return json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as e:
        try:  # recover the id, if we can, so the drop can be traced back to the source
            rid = json.loads(line.decode("utf-8", "replace")).get("id")
        except (json.JSONDecodeError, AttributeError):
            rid = None
        return Drop(ordinal, None if rid is None else str(rid), "invalid_utf8", str(e)[:200])
    except json.JSONDecodeError as e:
        return Drop(ordinal, None, "unparseable_record", str(e)[:200])
