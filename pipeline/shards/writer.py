"""Shard files: the writer (samples → one WebDataset tar, byte-for-byte reproducible, visible
only when whole) and the streaming reader, both over ``storage`` (local or S3)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from pipeline import storage


@dataclass(frozen=True)
class ShardFile:
    name: str
    samples: int
    bytes: int
    sha256: str


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def is_shard_name(name: str | None) -> bool:
    """Whether ``name`` is one :func:`shard_name` gives."""
    return name is not None and re.fullmatch(r"shard-\d{6}\.tar", name) is not None


def write_shard(url: str, samples: Iterable[tuple[str, bytes, dict]]) -> ShardFile:
    """Write ``(key, jpg, json)`` samples as ``key.jpg``, ``key.json`` and ``key.txt`` (the json's
    caption: what open_clip_train and most WebDataset pipelines read), hashing as we go; the
    shard appears at ``url`` only when whole (``storage.open_write``). Fixed tar metadata makes
    reruns byte-identical."""
    count = 0
    with storage.open_write(url) as raw:
        out = _HashingWriter(raw)
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
            for key, jpg, meta in samples:
                _add(tar, f"{key}.jpg", jpg)
                _add(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False, sort_keys=True).encode())
                _add(tar, f"{key}.txt", meta["caption"].encode())
                count += 1
    return ShardFile(url.rsplit("/", 1)[-1], count, out.size, out.sha256.hexdigest())


def file_digest(url: str) -> tuple[int, str]:
    """(bytes, sha256) of a stored file, streamed."""
    digest, size = hashlib.sha256(), 0
    with storage.open_stream(url) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def read_samples(url: str, handler: Callable[[Exception], bool]) -> Iterator[dict[str, Any]]:
    """The samples of one shard, streamed: ``{"__key__", "__url__", "jpg": bytes, "json": bytes}``.

    WebDataset's own tar expansion and key grouping over our storage (local or S3). ``handler``
    gets any error opening or reading the shard and returns whether to go on (WebDataset's rule).
    webdataset is imported here: it imports torch, which the data-prep driver has no use for.
    """
    import webdataset as wds

    try:
        stream = storage.open_stream(url)
    except Exception as e:  # noqa: BLE001 - the handler decides, as for errors while reading
        handler(e)
        return
    with stream:
        files = wds.tariterators.tar_file_expander([{"url": url, "stream": stream}], handler=handler)
        yield from wds.tariterators.group_by_keys(files, handler=handler)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.raw.write(data)
