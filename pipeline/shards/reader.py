"""Stored files read back, streamed over ``storage`` (local or S3): a file's size and sha256
(what manifests and completion records check a shard by), and a shard's samples."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

from pipeline import storage


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
