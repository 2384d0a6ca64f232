"""Our own index (JSONL or Parquet): one row per sample, ``{"id", "image", "caption", "boxes"?}``.

``image`` is a path relative to the index's folder (or absolute, or a URL), ``boxes`` a list of
``{"box": [x0, y0, x1, y1], "label": str}`` in pixels of the original image.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq

from pipeline import storage
from pipeline.config import BadInput
from pipeline.prep.records import Drop, InputRecord, caption_problem, is_text, record_id, unique_ids

REQUIRED_FIELDS = ("id", "image", "caption")


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
