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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

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
    boxes_cut: int = 0  # input boxes after the first image.max_boxes: counted, never carried


@dataclass(frozen=True)
class Drop:
    """An input that was not written, and why. ``dropped.parquet`` holds one row per drop."""

    ordinal: int
    id: str | None
    reason: str
    detail: str = ""


def unique_ids(items: Iterable[InputRecord | Drop]) -> Iterator[InputRecord | Drop]:
    """The first record with an id is kept; a later one is dropped (ids key the samples). Read
    ``ID_BATCH`` items at a time, so that the ids are looked up together (:class:`IdSet`)."""
    seen, items = IdSet(), iter(items)
    while batch := list(itertools.islice(items, ID_BATCH)):
        records = [item for item in batch if isinstance(item, InputRecord)]
        first = iter(seen.add_new([record.id for record in records]))
        for item in batch:
            if isinstance(item, InputRecord) and not next(first):
                item = Drop(item.ordinal, item.id, "duplicate_id", "an earlier input has this id")
            yield item


def keep_memory_returnable() -> None:
    """Large arrays freed go back to the OS: glibc raises its mmap threshold after big frees, and
    arrays then come from a heap that holds on to their pages, a third more than :class:`IdSet`
    holds at 10⁷ ids. A fixed threshold (glibc's default, 128 KiB) keeps the driver's memory what
    it holds. A no-op where libc is not glibc."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 17)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


class IdSet:
    """Every id seen so far, exactly, in 16 bytes an id: its 128-bit BLAKE2b digest, held as two
    uint64 columns in sorted runs that are searched a batch at a time. Two different ids share a
    digest with probability below n²/2¹²⁹ (10⁻²¹ for 10⁹ ids): that is the only way a record
    could be taken for a duplicate it is not. A Python set of the ids costs about 100 bytes each."""

    RUN = 1 << 20  # digests in a full run; the runs filling up are sorted batches

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []  # (hi, lo), sorted by hi
        self.filling: list[tuple[np.ndarray, np.ndarray]] = []  # small runs, merged at RUN digests

    def add_new(self, ids: list[str]) -> list[bool]:
        """For each id in order, whether it is new (not seen before, nor earlier in ``ids``);
        the new ones are added."""
        digests = [hashlib.blake2b(i.encode("utf-8", "surrogatepass"), digest_size=16).digest() for i in ids]
        pairs = np.frombuffer(b"".join(digests), dtype="<u8").reshape(-1, 2)
        hi, lo = pairs[:, 0], pairs[:, 1]
        known = self._contains(hi, lo)
        in_batch: set[bytes] = set()
        new = []
        for digest, was_known in zip(digests, known):
            new.append(not was_known and digest not in in_batch)
            in_batch.add(digest)
        keep = np.array(new, dtype=bool)
        self._add(hi[keep], lo[keep])
        return new

    def __len__(self) -> int:
        return sum(len(hi) for hi, _ in self.runs + self.filling)

    def _contains(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        order = np.argsort(hi)  # sorted needles: each search starts where the last one ended
        hi, lo = hi[order], lo[order]
        found = np.zeros(len(hi), dtype=bool)
        for run_hi, run_lo in self.runs + self.filling:
            at = np.minimum(np.searchsorted(run_hi, hi), len(run_hi) - 1)
            same_hi = run_hi[at] == hi
            found |= same_hi & (run_lo[at] == lo)
            for i in np.flatnonzero(same_hi & ~found):  # digests whose first 64 bits collide: rare
                end = np.searchsorted(run_hi, hi[i], side="right")
                found[i] = bool((run_lo[at[i] : end] == lo[i]).any())
        unsorted = np.empty_like(found)
        unsorted[order] = found
        return unsorted

    def _add(self, hi: np.ndarray, lo: np.ndarray) -> None:
        """A sorted run of the batch, merged with the last runs filling up while they are no
        larger (a binary counter: O(log) runs to search); a run of ``RUN`` digests is full."""
        run = _sorted(hi, lo)
        while self.filling and len(self.filling[-1][0]) <= len(run[0]):
            run = _sorted(*(np.concatenate(column) for column in zip(self.filling.pop(), run)))
        (self.runs if len(run[0]) >= self.RUN else self.filling).append(run)


def _sorted(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(hi, kind="stable")  # timsort: two sorted runs merge in linear time
    return hi[order], lo[order]


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
