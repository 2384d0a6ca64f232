"""Our own index (JSONL or Parquet): one row per sample, ``{"id", "image", "caption", "boxes"?}``.

``image`` is a path relative to the index's folder (or absolute, or a URL), ``boxes`` a list of
``{"box": [x0, y0, x1, y1], "label": str}`` in pixels of the original image.

JSONL as people have it reads as the same rows: compressed (``.jsonl.gz``, ``.jsonl.zst``, as
img2dataset and HF write it), with CRLF line ends, without a final newline, after a UTF-8
byte-order mark (Windows editors write one).
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.config import BadInput, one_line
from pipeline.prep.records import (
    Drop,
    IdSet,
    InputRecord,
    SeenIds,
    caption_problem,
    declared_size,
    first_of_ids,
    id_digests,
    is_text,
    pack,
    parse_json,
    record_id,
    unpack,
)
from pipeline.text import encoding

REQUIRED_FIELDS = ("id", "image", "caption")
log = logging.getLogger(__name__)

READERS = min(4, os.cpu_count() or 1)  # processes that parse and validate an index's blocks
READER_EXIT_S = 10.0  # a reader still running this long after the read ends is killed
BLOCK_BYTES = 1 << 20  # a JSONL block: whole lines, about 1 MB
BLOCK_ROWS = 8192  # a Parquet block
CODECS = {".gz": "gzip", ".zst": "zstd"}  # a JSONL index's compression suffix → pyarrow's codec
BOM = b"\xef\xbb\xbf"  # UTF-8's byte-order mark


def index_format(url: str) -> str:
    """``jsonl`` or ``parquet``, by the name's suffix; a compressed JSONL is ``jsonl`` too."""
    if url.endswith(".parquet"):
        return "parquet"
    if (url.rsplit(".", 1)[0] if _compression(url) else url).endswith((".jsonl", ".json")):
        return "jsonl"
    raise BadInput(f"input.index: {url} is neither .jsonl nor .parquet (JSONL may be .jsonl.gz, .jsonl.zst)")


def _compression(url: str) -> str | None:
    """The codec a name's suffix says the file is compressed with; None: not compressed."""
    return next((codec for suffix, codec in CODECS.items() if url.endswith(suffix)), None)


def read_index(url: str, max_caption_chars: int, seen: SeenIds | None = None) -> Iterator[InputRecord | Drop]:
    """Every row of the index, in order, as a valid record or a drop; duplicate ids (those in
    ``seen``; None: a new :class:`IdSet`) are dropped. Blocks of rows are parsed, validated and
    their ids hashed in ``READERS`` processes when the index has more than one block
    (``_in_order``); the driver then only finds duplicates among the digests and cuts shards."""
    parse = functools.partial(parse_block, base_dir=storage.parent(url), max_caption_chars=max_caption_chars)
    seen = IdSet() if seen is None else seen
    for packed, digests in _in_order(parse, _blocks(url)):
        yield from first_of_ids(seen, unpack(packed), digests)


def parse_block(first: int, block: bytes | pa.RecordBatch, base_dir: str, max_caption_chars: int) -> tuple:
    """A block's rows, numbered from ``first``, as records or drops (``validate``), packed
    (``records.pack``), and the digests of the records' ids."""
    rows = block.to_pylist() if isinstance(block, pa.RecordBatch) else _json_rows(block, first)
    items = [
        row if type(row) is Drop else validate(row, ordinal, base_dir, max_caption_chars)
        for ordinal, row in enumerate(rows, first)
    ]
    return pack(items), id_digests(item.id for item in items if type(item) is InputRecord)


def validate(row: Any, ordinal: int, base_dir: str, max_caption_chars: int) -> InputRecord | Drop:
    if not isinstance(row, dict):
        return Drop(ordinal, None, "unparseable_record", f"expected an object, got {type(row).__name__}")
    raw_id = row.get("id")
    rid = record_id(raw_id)
    for name in REQUIRED_FIELDS:
        if row.get(name) is None and not (name == "caption" and name in row):
            return Drop(ordinal, rid, "missing_field", name)
    if rid is None or not rid.strip():
        return Drop(ordinal, None, "invalid_id", repr(raw_id))
    if not is_text(rid):
        return Drop(ordinal, None, "invalid_utf8", f"id {rid!a}")
    if not isinstance(row["image"], str) or not row["image"].strip():
        return Drop(ordinal, rid, "invalid_image_ref", repr(row["image"]))
    if not is_text(row["image"]):
        return Drop(ordinal, rid, "invalid_utf8", "image")
    problem = caption_problem(row["caption"], max_caption_chars)
    if problem:
        return Drop(ordinal, rid, *problem)
    return InputRecord(
        ordinal,
        rid,
        storage.resolve(base_dir, row["image"]),
        row["caption"],
        row.get("boxes"),
        declared_size=declared_size(row),
    )


def count_index_rows(url: str) -> int:
    """The index's rows, as ``read_index`` numbers them (non-blank lines), without parsing them."""
    if index_format(url) == "parquet":
        with storage.open_read(url) as f, _parquet_errors(url):
            return pq.ParquetFile(f).metadata.num_rows
    with _open_jsonl(url) as f:
        return sum(map(_rows_in, _line_blocks(f)))


@contextlib.contextmanager
def _parquet_errors(url: str) -> Iterator[None]:
    """A Parquet file pyarrow cannot read (cut short, corrupt) is a bad ``input.index``."""
    try:
        yield
    except pa.ArrowException as e:
        raise BadInput(f"input.index: {url} is not a readable Parquet file ({e})") from e


@contextlib.contextmanager
def _open_jsonl(url: str) -> Iterator[BinaryIO]:
    """The JSONL index's bytes; a compressed one decompressed as it is read (S3: as it downloads),
    never whole. A stream that does not decompress (cut short, another codec) is a bad
    ``input.index``, found by ``count_index_rows`` before the job reads a record."""
    codec = _compression(url)
    if codec is None:
        with storage.open_read(url) as f:
            yield f
        return
    with storage.open_stream(url) as raw:
        try:
            yield io.BufferedReader(pa.CompressedInputStream(raw, codec), BLOCK_BYTES)
        except (OSError, pa.ArrowException) as e:
            raise BadInput(f"input.index: {url} does not decompress as {codec} ({one_line(e)})") from e


def _line_blocks(f: BinaryIO) -> Iterator[bytes]:
    """The JSONL in blocks of whole lines, about ``BLOCK_BYTES`` each: a block ends after a
    ``\\n``, so never inside a character or a CRLF. A byte-order mark can only be the stream's
    first bytes, and is not part of the first line."""
    block = (f.read(BLOCK_BYTES) + f.readline()).removeprefix(BOM)
    while block:
        yield block
        block = f.read(BLOCK_BYTES) + f.readline()


def _rows_in(block: bytes) -> int:
    """A JSONL block's rows: its non-blank lines."""
    return sum(map(bool, map(bytes.strip, block.split(b"\n"))))


def _blocks(url: str) -> Iterator[tuple[int, bytes | pa.RecordBatch]]:
    """The index in blocks of whole rows (JSONL: about ``BLOCK_BYTES`` of whole lines; Parquet:
    ``BLOCK_ROWS`` rows), each with the ordinal of its first row."""
    first = 0
    if index_format(url) == "parquet":
        with storage.open_read(url) as f, _parquet_errors(url):
            streamed = pq.ParquetFile(f, buffer_size=1 << 20, pre_buffer=False)  # not a row group at once
            for batch in streamed.iter_batches(BLOCK_ROWS):
                yield first, batch
                first += batch.num_rows
        return
    with _open_jsonl(url) as f:
        for block in _line_blocks(f):
            if not first:
                encoding.refuse_wide(block, f"input.index: {url}")
            yield first, block
            first += _rows_in(block)


def _in_order(parse: Callable[..., tuple], blocks: Iterator[tuple]) -> Iterator[tuple]:
    """``parse`` over the blocks, results in order: in this process when there is one block (the
    spawn of the readers costs a second), else in ``READERS`` processes, one block ahead each.
    The readers only make it faster: when they cannot start or die (the driver's folder deleted
    under it, no processes left, a reader killed), the blocks not yet parsed are parsed here."""
    head = list(itertools.islice(blocks, 2))
    if len(head) < 2:
        for block in head:
            yield parse(*block)
        return
    blocks = itertools.chain(head, blocks)
    ahead: deque[tuple[tuple, Future]] = deque()  # blocks handed to a reader, and their results
    unsent: list[tuple] = []  # a block read but not handed out when a reader could not start
    context = multiprocessing.get_context("spawn")  # the driver runs Ray's threads: never fork it
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(READERS, mp_context=context)
    try:
        for block in blocks:
            unsent = [block]
            ahead.append((block, pool.submit(parse, *block)))
            unsent = []
            if len(ahead) > READERS:
                yield ahead[0][1].result()
                ahead.popleft()
        while ahead:
            yield ahead[0][1].result()
            ahead.popleft()
        return
    except (OSError, BrokenProcessPool) as e:
        log.warning("index readers failed (%s): the driver parses the rest", one_line(e))
    finally:
        _stop(pool, set(multiprocessing.active_children()) - before)
    for block in itertools.chain((block for block, _ in ahead), unsent, blocks):
        yield parse(*block)


def _stop(pool: ProcessPoolExecutor, readers: set[multiprocessing.process.BaseProcess]) -> None:
    """The readers stopped: asked to, and killed if they have not ended in ``READER_EXIT_S``.
    The pool itself is not waited for: one that broke can have started a reader it then never
    stops and waits for forever (CPython's executor: a submit racing its cleanup of a dead
    reader; seen once in CI, as a test that hung)."""
    pool.shutdown(wait=False, cancel_futures=True)
    for reader in readers:
        reader.join(READER_EXIT_S)
        if reader.is_alive():
            reader.kill()
            reader.join()


def _json_rows(block: bytes, first: int) -> list[dict | Drop]:
    lines = [line for line in block.split(b"\n") if line.strip()]
    return [_parse_line(line, ordinal) for ordinal, line in enumerate(lines, first)]


def _parse_line(line: bytes, ordinal: int) -> dict | Drop:
    try:
        return parse_json(line.decode("utf-8"))
    except UnicodeDecodeError as e:
        try:  # recover the id, if we can, so the drop can be traced back to the source
            rid = parse_json(line.decode("utf-8", "replace")).get("id")
        except (ValueError, AttributeError):
            rid = None
        return Drop(ordinal, None if rid is None else str(rid), "invalid_utf8", str(e))
    except ValueError as e:  # not JSON; nesting 10⁵ deep
        return Drop(ordinal, None, "unparseable_record", f"{type(e).__name__}: {e}")
