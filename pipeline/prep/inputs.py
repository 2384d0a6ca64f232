"""What the input is (``input.format``): where its files are, what identifies them, how to read them.

Formats: ``index`` (our JSONL/Parquet index, ``index.py``), ``webdataset`` (img2dataset-style
tars, ``tars.py``), ``coco`` (captions + instances JSON, ``coco.py``), ``sharegpt4v`` (a caption
JSON list, ``sharegpt4v.py``), ``visual_genome`` (region descriptions, ``visual_genome.py``).
Each reads into the same ordered stream of records and drops; ``input.skip``/``input.limit``
take a slice of it by ordinal. :data:`FORMATS` holds each one's reader and manifest entry, and
``prep/config.FORMAT_KEYS`` its keys: adding a format is its reader module, an entry in each, and
its name in ``InputConfig.format``.

A job's identity (``run_id``, what ``existing_output=resume`` checks) covers every input file:
index and annotation files (COCO, ShareGPT4V, Visual Genome) by size + sha256 (they are the
records, and small next to the images);
tars by size + version, the S3 ETag or the local mtime, because hashing a corpus of tars would
read all of it once more before any work. Any rewrite of a tar changes its ETag (S3) or mtime
(a copy that preserves mtimes preserves them from a source that itself changed), and an added,
removed or renamed tar changes the list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline import storage
from pipeline.config import BadInput, InputNotFound
from pipeline.prep import dedup, tars
from pipeline.prep.coco import read_coco
from pipeline.prep.config import FORMAT_KEYS, InputConfig
from pipeline.prep.index import count_index_rows, index_format, read_index
from pipeline.prep.records import Drop, InputRecord, SeenIds, is_text
from pipeline.prep.sharegpt4v import read_sharegpt4v
from pipeline.prep.visual_genome import read_visual_genome
from pipeline.shards.reader import file_digest
from pipeline.storage import FileStat

InputFiles = list[tuple[str, FileStat | None]]  # URL, size and version; None: a named tar that is not there


@dataclass(frozen=True)
class Limits:
    """What a reader is given besides the config: the job's bounds per record, how a webdataset
    input's tars are listed, and the ids seen so far (in the driver or not: ``dedup.py``)."""

    caption_chars: int
    sentences: int
    list_tars: tars.Lister
    seen: SeenIds


@dataclass(frozen=True)
class InputFormat:
    """One ``input.format``: how it is read (its keys: ``FORMAT_KEYS``). A new format is its reader
    module and an entry in :data:`FORMATS`; every other step of the job reads the entry."""

    read: Callable[[InputConfig, InputFiles, Limits], Iterator[InputRecord | Drop]]
    locate: Callable[[InputConfig], InputFiles] = lambda cfg: _named_files(cfg)
    # the manifest's ``input`` section beside ``format``: default, the required keys
    describe: Callable[[InputConfig, InputFiles], dict] = lambda cfg, files: _keys(cfg)
    # the URL whose folder names the dataset: default, the first input file's
    names_source: Callable[[InputConfig, InputFiles], str] = lambda cfg, files: files[0][0]
    count: Callable[[InputConfig], int | None] = lambda cfg: None  # inputs, when cheap to know


FORMATS: dict[str, InputFormat] = {
    "index": InputFormat(
        read=lambda cfg, files, limits: read_index(cfg.index, limits.caption_chars, limits.seen),
        locate=lambda cfg: (index_format(cfg.index), _named_files(cfg))[1],
        describe=lambda cfg, files: {"format": index_format(cfg.index), "index": cfg.index},
        count=lambda cfg: count_index_rows(cfg.index),
    ),
    "webdataset": InputFormat(
        read=lambda cfg, files, limits: tars.read_tars(
            files, limits.caption_chars, limits.list_tars, limits.seen
        ),
        locate=lambda cfg: _tars(cfg.shards),
        describe=lambda cfg, files: {"shards": cfg.shards, "tars": len(files)},
    ),
    "coco": InputFormat(
        read=lambda cfg, files, limits: read_coco(
            cfg.captions, cfg.instances, cfg.images, limits.caption_chars, limits.seen
        ),
        describe=lambda cfg, files: {
            "captions": cfg.captions,
            "instances": cfg.instances or None,
            "images": cfg.images,
        },
        names_source=lambda cfg, files: cfg.images,  # train2017/ sits in the dataset's folder
    ),
    "sharegpt4v": InputFormat(
        read=lambda cfg, files, limits: read_sharegpt4v(
            cfg.captions, cfg.images, limits.caption_chars, limits.seen
        ),
    ),
    "visual_genome": InputFormat(
        read=lambda cfg, files, limits: read_visual_genome(
            cfg.regions,
            cfg.images,
            limits.caption_chars,
            limits.sentences,
            cfg.keep_regions == "all",
            limits.seen,
        ),
        describe=lambda cfg, files: {
            **_keys(cfg),
            **({"keep_regions": cfg.keep_regions} if cfg.keep_regions != "said" else {}),
        },
    ),
}


def locate(cfg: InputConfig) -> InputFiles:
    """The input's files; fails before any work, naming the key, when the input is not there."""
    return FORMATS[cfg.format].locate(cfg)


def _named_files(cfg: InputConfig) -> InputFiles:
    """The annotation or index files the config names, each a regular file, and the images folder
    there if the format reads one."""
    required, optional = FORMAT_KEYS[cfg.format]
    if "images" in required and not storage.is_dir(cfg.images):
        raise InputNotFound(f"input.images: {cfg.images} is not a folder (or an S3 prefix holding objects)")
    named = [(key, getattr(cfg, key)) for key in required + optional if key != "images"]
    for key, url in named:
        if url and not storage.exists(url):
            raise InputNotFound(f"input.{key}: {url} does not exist")
        if url and not storage.is_regular_file(url):  # a FIFO would block the read that hashes it
            raise BadInput(f"input.{key}: {url} is not a regular file")
    return [(url, FileStat(*file_digest(url))) for _, url in named if url]


def _tars(spec: str) -> InputFiles:
    files = tars.locate(spec)
    if not any(stat for _, stat in files):
        raise InputNotFound(f"input.shards: no tar found at {spec}")
    return files


def _keys(cfg: InputConfig) -> dict:
    return {key: getattr(cfg, key) for key in FORMAT_KEYS[cfg.format][0]}


def read_input(
    cfg: InputConfig,
    files: InputFiles,
    max_caption_chars: int,
    max_sentences: int,
    max_boxes: int,
    list_tars: tars.Lister = tars.list_locally,
    id_sets: dedup.IdSets = dedup.in_driver,
) -> Iterator[InputRecord | Drop]:
    """Every input of the slice, in order (the ordinals), as a valid record or a drop with its reason;
    a record's boxes after the first ``max_boxes`` are cut here, where they are read, and counted.
    ``list_tars`` lists the tars of a ``webdataset`` input (the job lists them as Ray tasks);
    ``id_sets`` makes the set of seen ids (``ray.dedup``: the job's may be on the cluster)."""
    read = FORMATS[cfg.format].read
    items = dedup.read_unique(
        lambda seen: read(cfg, files, Limits(max_caption_chars, max_sentences, list_tars, seen)), id_sets
    )
    if cfg.skip or cfg.limit is not None:
        items = ordinal_slice(items, cfg.skip, cfg.limit)
    return admit(items, max_boxes)


def admit(items: Iterator[InputRecord | Drop], max_boxes: int) -> Iterator[InputRecord | Drop]:
    """Each record as a worker may take it, whatever its reader checked: its id, image reference
    and caption valid Unicode (else a lone surrogate would stop the job where a table or tar is
    written), and at most ``max_boxes`` boxes (10⁵ boxes on one record must not travel to a
    worker, or sit in the driver's shard in flight). Runs on every input: kept lean."""
    for item in items:
        if type(item) is InputRecord:
            if not (is_text(item.id) and is_text(item.image) and is_text(item.caption)):
                item = Drop(item.ordinal, item.id, "invalid_utf8", f"id, image or caption of {item.id!a}")
            elif type(item.boxes) is list and len(item.boxes) > max_boxes:
                left_out = {**(item.boxes_left_out or {}), "box_over_limit": len(item.boxes) - max_boxes}
                item = item._replace(boxes=item.boxes[:max_boxes], boxes_left_out=left_out)
        yield item


def ordinal_slice(
    items: Iterator[InputRecord | Drop], skip: int, limit: int | None
) -> Iterator[InputRecord | Drop]:
    """The inputs whose ordinal is in ``[skip, skip + limit)``; reading stops after the last.
    Every reader yields ordinals in increasing order, and decides drops (duplicate ids too) over
    what it has read, so a slice holds exactly what the whole input's run has in that range."""
    for item in items:
        if limit is not None and item.ordinal >= skip + limit:
            return
        if item.ordinal >= skip:
            yield item


def count(cfg: InputConfig) -> int | None:
    """How many inputs the slice holds, when that is cheap to know before reading them: an
    index's lines (JSONL, counted without parsing) or rows (Parquet metadata); None otherwise."""
    total = FORMATS[cfg.format].count(cfg)
    if total is None:
        return None
    end = total if cfg.limit is None else min(total, cfg.skip + cfg.limit)
    return max(0, end - cfg.skip)


def urls(cfg: InputConfig, files: InputFiles) -> list[str]:
    """Everything the input reads from: its files, and the images folder of formats that have one."""
    return [url for url, _ in files] + ([cfg.images] if cfg.images else [])


def identity(files: InputFiles) -> list:
    return [[url, stat.size, stat.version] if stat else [url, None, None] for url, stat in files]


def describe(cfg: InputConfig, files: InputFiles) -> dict:
    """The manifest's ``input`` section (``source`` is added by the job)."""
    window = {"skip": cfg.skip, "limit": cfg.limit} if cfg.skip or cfg.limit is not None else {}
    return {"format": cfg.format, **FORMATS[cfg.format].describe(cfg, files), **window}


def default_source(cfg: InputConfig, files: InputFiles) -> str:
    """The dataset's folder name: the folder of the index, the first tar, the annotation file, or
    COCO's images folder's parent."""
    return Path(storage.parent(FORMATS[cfg.format].names_source(cfg, files))).name
