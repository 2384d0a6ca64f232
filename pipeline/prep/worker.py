"""The data-prep worker: one shard's records → image, text and grounding stages → the shard tar.

The unit of work is an output shard (img2dataset's design). The driver hands a worker a
:class:`ShardTask`, the shard's index and its input records in input order; the worker runs
every stage over them in its own process and writes the tar, so a shard's images never cross
the object store and each shard lands as soon as it is done. A worker is a Ray actor
(``job.py``): spaCy and the grounder load once per worker, not once per shard.

What flows between the stages is one :class:`Item` per record; each stage fills in its
fields, or sets ``error`` (a drop reason) and the later stages pass the item by:

============  ============================================  ==============================
stage         adds                                           drops (``error``)
============  ============================================  ==============================
image         ``stored`` (capped RGB JPEG, size, scale),     ``image_*`` (missing, empty,
              ``annotations`` (input boxes on the stored     corrupt, too large, not
              image, cleaned), ``box_drops`` (by reason)     decodable, unreadable, path
                                                             invalid), ``boxes_unusable``
text          the caption cleaned (``text.clean``),          ``caption_token_too_long``,
              ``hierarchy`` (sentences, phrases, lexemes),   ``caption_unparseable``,
              a ``lexeme`` on every annotation               ``box_label_unparseable``
grounding     ``sample`` (the schema-v1 JSON: phrases →      ``grounding_failed``
              regions), ``ambiguous``
writer        (the tar; per-shard stats; drops with shard)
============  ============================================  ==============================

Every record of the task ends as a sample in the tar or a drop with its reason, so a
shard's stats account for all of its inputs: ``inputs == samples + dropped``.
"""

from __future__ import annotations

import io
import logging
import re
import socket
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import ray
from PIL import Image

from pipeline import storage
from pipeline.grounding.base import Annotation, GroundingRequest
from pipeline.prep.config import PrepConfig
from pipeline.prep.images import ImageRejected, StoredImage, encode, map_boxes
from pipeline.prep.output import ShardResult, write_record
from pipeline.prep.records import Drop, InputRecord, pack, unpack
from pipeline.schema import Phrase, Sample, sample_key
from pipeline.shards.stats import DropRow, ShardStats
from pipeline.shards.writer import ShardFile, shard_name, write_shard
from pipeline.text.concepts import clean_caption

if TYPE_CHECKING:
    from pipeline.text.hierarchy import TextHierarchy

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

GROUND_CHUNK = 64  # records whose decoded images a grounder that needs pixels holds at once


@dataclass(frozen=True)
class ShardTask:
    index: int  # the shard's number: its name, and its place in the dataset
    records: list[InputRecord]  # the valid input records it holds, in input order
    crashed: tuple[Drop, ...] = ()  # its records that killed their worker (pool.py): drops, not records

    def __reduce__(self) -> tuple:
        """Pickled (by Ray, on the driver, for every shard) with its records as columns: 4x
        cheaper than the records themselves."""
        return _unpack_task, (self.index, pack(self.records), self.crashed)


def _unpack_task(index: int, records: tuple, crashed: tuple[Drop, ...]) -> ShardTask:
    return ShardTask(index, unpack(records), crashed)  # type: ignore[arg-type]  # records only


@dataclass
class Item:
    """One record on its way through the stages (the table in the module docstring)."""

    record: InputRecord
    error: str = ""  # the drop reason; set once, by the stage that rejects the record
    detail: str = ""
    stored: StoredImage | None = None
    annotations: list[dict] = field(default_factory=list)
    box_drops: dict[str, int] = field(default_factory=dict)
    hierarchy: TextHierarchy | None = None
    sample: Sample | None = None
    ambiguous: int = 0


class ShardWorker:
    """Holds the fixed costs (spaCy, the grounder) and turns :class:`ShardTask` s into shards."""

    def __init__(self, cfg: PrepConfig, root: str, source: str, run_id: str):
        from pipeline.grounding import build_grounder  # spaCy, torch: the worker's, not the driver's
        from pipeline.text.parser import CaptionParser

        self.cfg, self.root, self.source, self.run_id = cfg, root, source, run_id
        self.parser = CaptionParser(cfg.text)
        self.long_token = re.compile(rf"\S{{{cfg.text.max_token_chars + 1}}}")  # caption_token_too_long
        self.grounder = build_grounder(cfg.grounding)
        self.node = socket.gethostname()

    def provenance(self) -> dict:
        """What the manifest records to reproduce the text and grounding stages."""
        return {"text": self.parser.provenance(), "grounder": self.grounder.provenance()}

    def ready(self) -> str:
        """The node this worker runs on, once spaCy and the grounder are loaded."""
        return self.node

    @ray.method(concurrency_group="heartbeat")
    def ping(self) -> None:
        """Answered from a thread of its own while a shard is processed: the pool's heartbeat."""

    def process(self, task: ShardTask) -> ShardResult:
        items = self.stages(task.records)
        return self.write(task, items)

    def probe(self, records: list[InputRecord]) -> None:
        """The stages over some records, nothing kept: the pool looks for a record that kills
        its worker by whether this returns."""
        self.stages(records)

    def stages(self, records: list[InputRecord]) -> list[Item]:
        items = [Item(record) for record in records]
        self.image_stage(items)
        self.text_stage([item for item in items if not item.error])
        self.grounding_stage([item for item in items if not item.error])
        return items

    def image_stage(self, items: list[Item]) -> None:
        """Fetch (``ray.io_threads`` reads ahead: S3 latency) and re-encode each image."""
        max_bytes = self.cfg.image.max_bytes
        fetches = prefetch(
            lambda record: _image_bytes(record, max_bytes),
            [item.record for item in items],
            self.cfg.ray.io_threads,
        )
        for item, fetch in zip(items, fetches):
            try:
                stored = encode(fetch.result(), self.cfg.image)
            except FileNotFoundError:
                item.error, item.detail = "image_missing", item.record.image
                continue
            except IsADirectoryError:
                item.error, item.detail = "image_unreadable", f"a directory, not a file: {item.record.image}"
                continue
            except storage.TooLarge:
                item.error, item.detail = "image_too_large", f"file over image.max_bytes = {max_bytes}"
                continue
            except ImageRejected as e:
                item.error, item.detail = e.reason, e.detail
                continue
            except Exception as e:  # noqa: BLE001 - one record's data never stops a job: OSError, S3 errors
                item.error, item.detail = "image_unreadable", _describe(e)
                continue
            item.stored = stored
            try:
                item.annotations, item.box_drops = map_boxes(
                    item.record.boxes, stored, self.cfg.image, item.record.declared_size
                )
            except Exception as e:  # noqa: BLE001 - a box no check foresaw fails its record only
                item.error, item.detail = "boxes_unusable", _describe(e)
                continue
            for reason, count in (item.record.boxes_left_out or {}).items():
                item.box_drops[reason] = item.box_drops.get(reason, 0) + count

    def text_stage(self, items: list[Item]) -> None:
        """Captions (cleaned first, if configured) and annotation labels, each in one batched
        spaCy pass over the shard."""
        if self.cfg.text.clean == "bclip":
            for item in items:
                item.record = item.record._replace(caption=clean_caption(item.record.caption))
        limit = self.cfg.text.max_token_chars
        for item in items:
            if token := self.long_token.search(item.record.caption):
                item.error = "caption_token_too_long"
                item.detail = f"over text.max_token_chars = {limit} non-space characters at {token.start()}"
        items = [item for item in items if not item.error]
        hierarchies = each_or_alone(self.parser.parse, [item.record.caption for item in items])
        for item, hierarchy in zip(items, hierarchies):
            if isinstance(hierarchy, Exception):
                item.error, item.detail = "caption_unparseable", _describe(hierarchy)
            else:
                item.hierarchy = hierarchy
        labelled = [(item, a) for item in items if not item.error for a in item.annotations]
        for (item, annotation), lexeme in zip(
            labelled, each_or_alone(self.parser.lexemes, [a["label"] for _, a in labelled])
        ):
            if isinstance(lexeme, Exception):
                item.error, item.detail = "box_label_unparseable", _describe(lexeme)
            else:
                annotation["lexeme"] = lexeme

    def grounding_stage(self, items: list[Item]) -> None:
        items = [item for item in items if not item.error]
        for start in range(0, len(items), GROUND_CHUNK):
            chunk = items[start : start + GROUND_CHUNK]
            for item, sample in zip(chunk, each_or_alone(self._samples, chunk)):
                if isinstance(sample, Exception):
                    item.error, item.detail = "grounding_failed", _describe(sample)
                else:
                    item.sample, item.ambiguous = sample

    def _samples(self, items: list[Item]) -> list[tuple[Sample, int]]:
        """The schema samples of grounded items, with their ambiguous-phrase counts."""
        samples = []
        for item, grounding in zip(items, self.grounder.ground([self._request(item) for item in items])):
            h = item.hierarchy
            phrases = [
                Phrase(p.text, p.sentence, p.start, p.end, p.kind, region)
                for p, region in zip(h.phrases, grounding.phrase_regions)
            ]
            sample = Sample(
                id=item.record.id,
                source=self.source,
                width=item.stored.width,
                height=item.stored.height,
                caption=item.record.caption,
                sentences=h.sentences,
                phrases=phrases,
                regions=grounding.regions,
                origin=item.record.origin,
            )
            samples.append((sample, grounding.ambiguous))
        return samples

    def _request(self, item: Item) -> GroundingRequest:
        annotations = [Annotation(tuple(a["box"]), a["label"], a["lexeme"]) for a in item.annotations]
        stored, h = item.stored, item.hierarchy
        image = Image.open(io.BytesIO(stored.jpg)).convert("RGB") if self.grounder.needs_image else None
        return GroundingRequest(
            stored.width, stored.height, h.phrases, h.lexemes, annotations, image, h.sentences
        )

    def write(self, task: ShardTask, items: list[Item]) -> ShardResult:
        """The tar (good items, in input order), then its completion record: what a resumed run
        needs to account for the shard without redoing it."""
        name = shard_name(task.index)
        good = [item for item in items if not item.error]
        samples = (
            (sample_key(self.source, item.record.id), item.stored.jpg, item.sample.to_json()) for item in good
        )
        shard = write_shard(f"{self.root}/{name}", samples)
        dropped = [Drop(i.record.ordinal, i.record.id, i.error, i.detail) for i in items if i.error]
        drops = [DropRow.of(d, name) for d in [*dropped, *task.crashed]]
        result = ShardResult(shard_stats(shard, len(drops), good, self.node), drops)
        write_record(self.root, self.run_id, result)
        return result


def shard_stats(shard: ShardFile, dropped: int, good: list[Item], node: str) -> ShardStats:
    """The stats of a shard written from ``good`` items, ``dropped`` of its inputs not."""
    box_drops: Counter = Counter()
    for item in good:
        box_drops.update(item.box_drops)
    phrases = [p for item in good for p in item.sample.phrases]
    repairs = [item.stored.repairs for item in good]
    return ShardStats(
        name=shard.name,
        samples=shard.samples,
        bytes=shard.bytes,
        sha256=shard.sha256,
        inputs=len(good) + dropped,
        dropped=dropped,
        repaired=sum(1 for r in repairs if r),  # samples; an image can have several repairs
        boxes_dropped=sum(box_drops.values()),
        phrases=len(phrases),
        regions=sum(len(item.sample.regions) for item in good),
        linked_phrases=sum(p.region is not None for p in phrases),
        ambiguous_phrases=sum(item.ambiguous for item in good),
        repaired_by_reason=dict(Counter(r for rs in repairs for r in rs)),
        boxes_dropped_by_reason=dict(box_drops),
        node=node,
    )


def each_or_alone(fn: Callable[[list[T]], list[R]], args: list[T]) -> list[R | Exception]:
    """``fn`` over the whole batch; if that raises, over each argument alone, so that one
    record's data fails that record (its exception in its place), never its shard or the job."""
    try:
        return fn(args)
    except Exception:  # noqa: BLE001 - which record it was is found below
        results: list[R | Exception] = []
    for arg in args:
        try:
            results.append(fn([arg])[0])
        except Exception as e:  # noqa: BLE001
            results.append(e)
    return results


def _describe(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"


def prefetch(fn: Callable[[T], R], args: Iterable[T], depth: int) -> Iterator[Future]:
    """``fn`` over ``args`` on ``depth`` threads, at most ``depth`` results ahead of the consumer,
    in order; each as a future, so that the consumer sees each call's own exception."""
    with ThreadPoolExecutor(depth) as pool:
        ahead: deque[Future] = deque()
        for arg in args:
            ahead.append(pool.submit(fn, arg))
            if len(ahead) > depth:
                yield ahead.popleft()
        while ahead:
            yield ahead.popleft()


def _image_bytes(record: InputRecord, max_bytes: int) -> bytes:
    """The bytes an image reference (``records.InputRecord``) points at: a file, or a range of
    one; never more than ``max_bytes`` (:class:`storage.TooLarge`). A path with a line break is
    refused unread: it is a broken index row far more often than a real name, and it would split
    every line-based record of it (logs, ``find``/``xargs``, a CSV of the drops)."""
    if "\n" in record.image or "\r" in record.image:
        raise ImageRejected("image_path_invalid", f"a line break in {record.image!r}")
    if record.image_size < 0:
        return storage.read_bytes(record.image, limit=max_bytes)
    if record.image_size > max_bytes:
        raise storage.TooLarge(f"{record.image_size} bytes")
    return storage.read_range(record.image, record.image_offset, record.image_size)
