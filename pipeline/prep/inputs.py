"""What the input is (``input.format``): where its files are, what identifies them, how to read them.

Formats: ``index`` (our JSONL/Parquet index, ``records.py``), ``webdataset`` (img2dataset-style
tars, ``tars.py``), ``coco`` (captions + instances JSON, ``coco.py``). Each reads into the same
ordered stream of records and drops.

A job's identity (``run_id``, what ``existing_output=resume`` checks) covers every input file:
index and COCO files by size + sha256 (they are the records, and small next to the images);
tars by size + version, the S3 ETag or the local mtime, because hashing a corpus of tars would
read all of it once more before any work. Any rewrite of a tar changes its ETag (S3) or mtime
(a copy that preserves mtimes preserves them from a source that itself changed), and an added,
removed or renamed tar changes the list.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.prep import tars
from pipeline.prep.coco import read_coco
from pipeline.prep.config import InputConfig
from pipeline.prep.records import Drop, InputRecord, index_format, read_index
from pipeline.shards import storage
from pipeline.shards.storage import FileStat
from pipeline.shards.writer import file_digest

InputFiles = list[tuple[str, FileStat | None]]  # URL, size and version; None: a named tar that is not there


def locate(cfg: InputConfig) -> InputFiles:
    """The input's files; fails before any work, naming the key, when the input is not there."""
    if cfg.format == "webdataset":
        files = tars.locate(cfg.shards)
        if not any(stat for _, stat in files):
            raise FileNotFoundError(f"input.shards: no tar found at {cfg.shards}")
        return files
    if cfg.format == "index":
        index_format(cfg.index)
    elif not storage.is_dir(cfg.images):
        raise FileNotFoundError(f"input.images: {cfg.images} is not a folder (or an S3 prefix holding objects)")
    named = [(key, getattr(cfg, key)) for key in (("index",) if cfg.format == "index" else ("captions", "instances"))]
    for key, url in named:
        if url and not storage.exists(url):
            raise FileNotFoundError(f"input.{key}: {url} does not exist")
    return [(url, FileStat(*file_digest(url))) for _, url in named if url]


def read_input(cfg: InputConfig, files: InputFiles, max_caption_chars: int) -> Iterator[InputRecord | Drop]:
    """Every input, in order (the ordinals), as a valid record or a drop with its reason."""
    if cfg.format == "index":
        return read_index(cfg.index, max_caption_chars)
    if cfg.format == "coco":
        return read_coco(cfg.captions, cfg.instances, cfg.images, max_caption_chars)
    return tars.read_tars(files, max_caption_chars)


def identity(files: InputFiles) -> list:
    return [[url, stat.size, stat.version] if stat else [url, None, None] for url, stat in files]


def describe(cfg: InputConfig, files: InputFiles) -> dict:
    """The manifest's ``input`` section (``source`` is added by the job)."""
    if cfg.format == "index":
        return {"format": index_format(cfg.index), "index": cfg.index}
    if cfg.format == "coco":
        return {"format": "coco", "captions": cfg.captions, "instances": cfg.instances or None, "images": cfg.images}
    return {"format": "webdataset", "shards": cfg.shards, "tars": len(files)}


def default_source(cfg: InputConfig, files: InputFiles) -> str:
    """The dataset's folder name: the index's folder, the (first) tar's folder, the COCO images' parent."""
    if cfg.format == "index":
        return Path(storage.parent(cfg.index)).name
    if cfg.format == "webdataset":
        return Path(storage.parent(files[0][0])).name
    return Path(storage.parent(cfg.images)).name  # COCO: train2017/ sits in the dataset's folder
