"""What the input is (``input.format``): where its files are, what identifies them, how to read them.

Formats: ``index`` (our JSONL/Parquet index, ``index.py``), ``webdataset`` (img2dataset-style
tars, ``tars.py``), ``coco`` (captions + instances JSON, ``coco.py``), ``sharegpt4v`` (a caption
JSON list, ``sharegpt4v.py``), ``visual_genome`` (region descriptions, ``visual_genome.py``).
Each reads into the same ordered stream of records and drops; ``input.skip``/``input.limit``
take a slice of it by ordinal.

A job's identity (``run_id``, what ``existing_output=resume`` checks) covers every input file:
index and annotation files (COCO, ShareGPT4V, Visual Genome) by size + sha256 (they are the
records, and small next to the images);
tars by size + version, the S3 ETag or the local mtime, because hashing a corpus of tars would
read all of it once more before any work. Any rewrite of a tar changes its ETag (S3) or mtime
(a copy that preserves mtimes preserves them from a source that itself changed), and an added,
removed or renamed tar changes the list.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline import storage
from pipeline.config import BadInput, InputNotFound
from pipeline.prep import tars
from pipeline.prep.coco import read_coco
from pipeline.prep.config import INPUT_KEYS, InputConfig
from pipeline.prep.index import count_index_rows, index_format, read_index
from pipeline.prep.records import Drop, InputRecord, is_text
from pipeline.prep.sharegpt4v import read_sharegpt4v
from pipeline.prep.visual_genome import read_visual_genome
from pipeline.shards.reader import file_digest
from pipeline.storage import FileStat

InputFiles = list[tuple[str, FileStat | None]]  # URL, size and version; None: a named tar that is not there


def locate(cfg: InputConfig) -> InputFiles:
    """The input's files; fails before any work, naming the key, when the input is not there."""
    if cfg.format == "webdataset":
        files = tars.locate(cfg.shards)
        if not any(stat for _, stat in files):
            raise InputNotFound(f"input.shards: no tar found at {cfg.shards}")
        return files
    if cfg.format == "index":
        index_format(cfg.index)
    elif not storage.is_dir(cfg.images):
        raise InputNotFound(f"input.images: {cfg.images} is not a folder (or an S3 prefix holding objects)")
    required, optional = INPUT_KEYS[cfg.format]
    named = [(key, getattr(cfg, key)) for key in required + optional if key != "images"]
    for key, url in named:
        if url and not storage.exists(url):
            raise InputNotFound(f"input.{key}: {url} does not exist")
        if url and not storage.is_regular_file(url):  # a FIFO would block the read that hashes it
            raise BadInput(f"input.{key}: {url} is not a regular file")
    return [(url, FileStat(*file_digest(url))) for _, url in named if url]


def read_input(
    cfg: InputConfig,
    files: InputFiles,
    max_caption_chars: int,
    max_sentences: int,
    max_boxes: int,
    list_tars: tars.Lister = tars.list_locally,
) -> Iterator[InputRecord | Drop]:
    """Every input of the slice, in order (the ordinals), as a valid record or a drop with its reason;
    a record's boxes after the first ``max_boxes`` are cut here, where they are read, and counted.
    ``list_tars`` lists the tars of a ``webdataset`` input (the job lists them as Ray tasks)."""
    if cfg.format == "index":
        items = read_index(cfg.index, max_caption_chars)
    elif cfg.format == "coco":
        items = read_coco(cfg.captions, cfg.instances, cfg.images, max_caption_chars)
    elif cfg.format == "sharegpt4v":
        items = read_sharegpt4v(cfg.captions, cfg.images, max_caption_chars)
    elif cfg.format == "visual_genome":
        keep_all = cfg.keep_regions == "all"
        items = read_visual_genome(cfg.regions, cfg.images, max_caption_chars, max_sentences, keep_all)
    else:
        items = tars.read_tars(files, max_caption_chars, list_tars)
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


def count(cfg: InputConfig, files: InputFiles) -> int | None:
    """How many inputs the slice holds, when that is cheap to know before reading them: an
    index's lines (JSONL, counted without parsing) or rows (Parquet metadata); None otherwise."""
    if cfg.format != "index":
        return None
    total = count_index_rows(cfg.index)
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
    if cfg.format == "index":
        return {"format": index_format(cfg.index), "index": cfg.index, **window}
    if cfg.format == "coco":
        return {
            "format": "coco",
            "captions": cfg.captions,
            "instances": cfg.instances or None,
            "images": cfg.images,
            **window,
        }
    if cfg.format == "webdataset":
        return {"format": "webdataset", "shards": cfg.shards, "tars": len(files), **window}
    kept = {"keep_regions": cfg.keep_regions} if cfg.keep_regions != "said" else {}
    return {
        "format": cfg.format,
        **{key: getattr(cfg, key) for key in INPUT_KEYS[cfg.format][0]},
        **kept,
        **window,
    }


def default_source(cfg: InputConfig, files: InputFiles) -> str:
    """The dataset's folder name: the index's folder, the (first) tar's folder, the COCO images' parent,
    the ShareGPT4V or Visual Genome annotation file's folder."""
    if cfg.format == "webdataset":
        return Path(storage.parent(files[0][0])).name
    if cfg.format == "coco":
        return Path(storage.parent(cfg.images)).name  # train2017/ sits in the dataset's folder
    return Path(storage.parent(files[0][0])).name  # the index or annotation file
