"""Input records: what every reader yields, and the checks every reader shares.

Every input format (our index in ``index.py``, WebDataset tars in ``tars.py``, COCO in
``coco.py``, ...) is read into the same stream of :class:`InputRecord` or :class:`Drop`, in a
fixed order whose positions are the ordinals. Everything that can be checked without touching
the image is checked there, on the driver, so that duplicate ids are caught with one pass over
the input and no worker wastes time on a record we cannot use.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import pyarrow as pa

from pipeline.schema import box_numbers

ID_BATCH = 16_384  # records whose ids are looked up together (unique_ids)


class InputRecord(NamedTuple):
    """One sample to prepare. The image reference, the one format the image stage reads, is
    ``image`` (a URL) with ``image_offset``/``image_size``: the image's bytes inside that file
    (a tar member); ``image_size == -1`` means the whole file is the image. A named tuple, not a
    frozen dataclass: the driver makes one per input record, and this is 5x cheaper to make."""

    ordinal: int  # 0-based position in the input: the record's identity within this input
    id: str
    image: str
    caption: str
    boxes: Any  # as given (validated per box later, against the decoded image size)
    image_offset: int = 0
    image_size: int = -1
    boxes_left_out: dict[str, int] | None = None  # input boxes not carried, by reason: counted
    origin: dict | None = None  # the input's own metadata for the sample (origin_fields)
    declared_size: tuple[int, int] | None = None  # the image's (width, height) as the input says


@dataclass(frozen=True)
class Drop:
    """An input that was not written, and why. ``dropped.parquet`` holds one row per drop.

    Its strings come from the input, so they are made safe here, where every drop is made: an
    id or detail that no UTF-8 file can hold (a lone surrogate) is escaped, the detail is cut
    to ``DETAIL_CHARS``. A drop can always be written."""

    ordinal: int
    id: str | None
    reason: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.id is not None:
            object.__setattr__(self, "id", printable(str(self.id)))
        object.__setattr__(self, "detail", printable(str(self.detail))[:DETAIL_CHARS])


DETAIL_CHARS = 200


def printable(text: str) -> str:
    """``text``, with what UTF-8 cannot encode (lone surrogates) written as ``\\udcff`` escapes."""
    return text if is_text(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def parse_json(data: bytes | str) -> Any:
    """One JSON document from an input. Raises ``ValueError`` only: for text that is not JSON
    or not UTF-8, and for nesting deeper than the parser goes. An integer too long for Python
    (over 4,300 digits) is read as ±inf, so that the field holding it fails its own check (an
    id, a box coordinate) rather than the whole document."""
    try:
        try:
            return json.loads(data)
        except json.JSONDecodeError:
            raise
        except ValueError as e:
            if "digits" not in str(e):  # not UTF-8, ...
                raise
            return json.loads(data, parse_int=huge_int)
    except RecursionError:
        raise ValueError("nested deeper than the JSON parser goes") from None


def huge_int(digits: str) -> int | float:
    """``int(digits)``, or ±inf for a number too long to convert (``json``'s ``parse_int``)."""
    try:
        return int(digits)
    except ValueError:
        return -math.inf if digits.startswith("-") else math.inf


class SeenIds(Protocol):
    """The ids seen so far, asked a batch at a time: an :class:`IdSet` in the driver, or one
    hash-partitioned across the cluster (``dedup.py``). The answers are the same."""

    def add_new(self, digests: bytes) -> np.ndarray: ...


def unique_ids(
    items: Iterable[InputRecord | Drop], seen: SeenIds | None = None
) -> Iterator[InputRecord | Drop]:
    """The first record with an id is kept; a later one is dropped (ids key the samples). Read
    ``ID_BATCH`` items at a time, so that the ids are looked up together in ``seen`` (None: a
    new :class:`IdSet`)."""
    seen, items = IdSet() if seen is None else seen, iter(items)
    while batch := list(itertools.islice(items, ID_BATCH)):
        yield from first_of_ids(
            seen, batch, id_digests([item.id for item in batch if type(item) is InputRecord])
        )


def first_of_ids(
    seen: SeenIds, batch: list[InputRecord | Drop], digests: bytes
) -> Iterator[InputRecord | Drop]:
    """``batch`` in order, its records whose id is in ``seen`` (or earlier in the batch) turned
    into drops; ``digests`` are those of its records' ids (:func:`id_digests`), made where the
    records were (the index's reader processes)."""
    new = iter(seen.add_new(digests).tolist())
    for item in batch:
        if type(item) is InputRecord and not next(new):
            item = Drop(item.ordinal, item.id, "duplicate_id", "an earlier input has this id")
        yield item


def id_digests(ids: Iterable[str]) -> bytes:
    """The ids' digests, :data:`IdSet.DIGEST` bytes each, end to end."""
    size = IdSet.DIGEST
    return b"".join(
        hashlib.blake2b(i.encode("utf-8", "surrogatepass"), digest_size=size).digest() for i in ids
    )


def pack(items: list[InputRecord | Drop]) -> tuple[list[list], list[Drop]]:
    """Items as record columns and drops, to cross a process boundary: a list of records
    pickles and unpickles 4x slower than its columns (the driver reads 10⁵ records a second)."""
    records = [item for item in items if type(item) is InputRecord]
    drops = [item for item in items if type(item) is not InputRecord]
    return [list(column) for column in zip(*records)], drops


def unpack(packed: tuple[list[list], list[Drop]]) -> list[InputRecord | Drop]:
    """:func:`pack`'s items, in their order (by ordinal)."""
    columns, drops = packed
    records: list[InputRecord | Drop] = list(map(InputRecord._make, zip(*columns)))
    return sorted(records + drops, key=ordinal) if drops else records


def ordinal(item: InputRecord | Drop) -> int:
    return item.ordinal


def keep_memory_returnable() -> None:
    """Large arrays freed go back to the OS: glibc raises its mmap threshold after big frees, and
    arrays then come from a heap that holds on to their pages, a third more than :class:`IdSet`
    holds at 10⁷ ids. A fixed threshold (glibc's default, 128 KiB) keeps the driver's memory what
    it holds (a no-op where libc is not glibc). Arrow allocates from the same heap, not its own
    pool, which kept 50 MB of a Parquet index's freed batches."""
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 17)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


class IdSet:
    """Every id seen so far, exactly, in 12 bytes an id: its 96-bit BLAKE2b digest (a uint64 and a
    uint32 column). Two different ids share a digest with probability below n²/2⁹⁷ (10⁻¹³ for
    10⁸ ids, 10⁻¹¹ for 10⁹): the only way a record could be taken for a duplicate it is not. A
    Python set of the ids costs about 100 bytes each.

    The digests are split by their first 4 bits into 16 parts, each a few sorted runs merged as
    a binary counter (a run merges into the one before while that is no larger): a batch is
    looked up in O(log n) runs a part, and the largest merge copies 1/8 of the set, so the set
    peaks at about 13 bytes an id at any size (13.2 measured at 10⁸). (More parts copy less but cost a
    numpy call per part and run for every batch: 256 parts made the lookups 3x slower.)"""

    DIGEST = 12  # bytes
    COLUMNS = np.dtype([("hi", "<u8"), ("lo", "<u4")])  # a digest as two unsigned ints
    PART_BITS = 4  # the digest's first bits that choose its part

    def __init__(self) -> None:
        self.parts: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(1 << self.PART_BITS)]

    def add_new(self, digests: bytes) -> np.ndarray:
        """For each digest in order (:func:`id_digests`), whether it is new (not seen before, nor
        earlier in ``digests``); the new ones are added."""
        columns = np.frombuffer(digests, dtype=self.COLUMNS)
        order = np.lexsort((columns["lo"], columns["hi"]))  # stable: the first of equal digests first
        hi, lo = columns["hi"][order], columns["lo"][order]
        new = np.ones(len(hi), dtype=bool)
        new[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
        prefix = hi >> np.uint64(64 - self.PART_BITS)
        bounds = np.searchsorted(prefix, np.arange(len(self.parts) + 1, dtype=np.uint64))
        for runs, start, end in zip(self.parts, bounds[:-1], bounds[1:]):
            if start < end:
                new[start:end] &= ~_contains(runs, hi[start:end], lo[start:end])
                _add(runs, hi[start:end][new[start:end]], lo[start:end][new[start:end]])
        unsorted = np.empty_like(new)
        unsorted[order] = new
        return unsorted

    def __len__(self) -> int:
        return sum(len(hi) for part in self.parts for hi, _ in part)


def _contains(runs: list[tuple[np.ndarray, np.ndarray]], hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Which of the (sorted) digests ``hi, lo`` are in the sorted ``runs``."""
    found = np.zeros(len(hi), dtype=bool)
    for run_hi, run_lo in runs:
        at = np.minimum(np.searchsorted(run_hi, hi), len(run_hi) - 1)
        same_hi = run_hi[at] == hi
        found |= same_hi & (run_lo[at] == lo)
        for i in np.flatnonzero(same_hi & ~found):  # digests whose first 64 bits collide: rare
            end = np.searchsorted(run_hi, hi[i], side="right")
            found[i] = bool((run_lo[at[i] : end] == lo[i]).any())
    return found


def _add(runs: list[tuple[np.ndarray, np.ndarray]], hi: np.ndarray, lo: np.ndarray) -> None:
    """A sorted run of new digests, merged with the last runs while they are no larger."""
    run = (hi, lo)
    while runs and len(runs[-1][0]) <= len(run[0]):
        merged = [np.concatenate(column) for column in zip(runs.pop(), run)]
        order = np.argsort(merged[0], kind="stable")  # timsort: two sorted runs merge in linear time
        run = (merged[0][order], merged[1][order])
    if len(run[0]):
        runs.append(run)


def is_text(value: Any) -> bool:
    """A string that is valid Unicode: no lone surrogate, from a byte that was not UTF-8 or a
    ``"\\ud800"`` escape in valid JSON, which no UTF-8 file (a tar, dropped.parquet) can hold."""
    if value.isascii():
        return True
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


ORIGIN_MAX_CHARS = 8192  # a longer metadata string (a whole EXIF dump) is left out


def origin_fields(meta: dict) -> dict:
    """An input's own metadata for a sample (img2dataset's url, original size, sha256, ...), as
    given, where any JSON reader gets it back exactly: top-level fields whose value is null, a
    bool, a 64-bit int, a finite float or a string of valid Unicode up to ``ORIGIN_MAX_CHARS``.
    Nested values are left out, and the caption and boxes, which the sample carries itself."""
    return {
        key: value
        for key, value in meta.items()
        if key not in ("caption", "boxes") and is_text(key) and _plain(value)
    }


def declared_size(meta: Any) -> tuple[int, int] | None:
    """The image size an input's metadata declares (``width`` and ``height``, positive ints, as
    COCO's ``images``, img2dataset's json and many indexes give them), or None. It tells boxes
    drawn on the raw, un-rotated pixels (``images.raw_frame``)."""
    if not isinstance(meta, dict):
        return None
    size = meta.get("width"), meta.get("height")
    if all(type(v) is int and v > 0 for v in size):
        return size
    return None


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and len(value) <= ORIGIN_MAX_CHARS and is_text(value)


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
    numbers = box_numbers(bbox)
    if isinstance(numbers, str):
        return bbox
    x, y, w, h = numbers
    return [x, y, x + w, y + h]
