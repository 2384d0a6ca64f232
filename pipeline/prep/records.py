"""Input records: what every reader yields, and the checks every reader shares.

Every input format (our index in ``index.py``, WebDataset tars in ``tars.py``, COCO in
``coco.py``, ...) is read into the same stream of :class:`InputRecord` or :class:`Drop`, in a
fixed order whose positions are the ordinals. Everything that can be checked without touching
the image is checked there, on the driver, so that duplicate ids are caught with one pass over
the input and no worker wastes time on a record we cannot use.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


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
