"""Shard files, written: samples → one WebDataset tar, byte-for-byte reproducible, visible only
when whole, over ``storage`` (local or S3). Reading them back: ``reader.py``."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

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
