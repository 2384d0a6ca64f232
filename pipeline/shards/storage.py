"""Where bytes live. Paths are plain local paths or ``file://`` URLs today; every read and
write of the pipeline goes through these few functions so another scheme (S3) plugs in here."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse


class StorageError(OSError):
    """Storage that cannot be used (unsupported scheme, unreadable path)."""


def local_path(url: str) -> Path:
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else url)
    if len(parsed.scheme) == 1:  # a Windows drive letter, not a scheme
        return Path(url)
    raise StorageError(f"{url}: storage scheme '{parsed.scheme}://' is not supported yet (local paths only)")


def resolve(base_dir: str, ref: str) -> str:
    """A reference from an index (relative to the index's folder, absolute, or a URL) as a URL."""
    if urlparse(ref).scheme not in ("", "file") or os.path.isabs(ref):
        return ref
    return os.path.join(base_dir, ref)


def parent(url: str) -> str:
    return str(local_path(url).parent)


def read_bytes(url: str) -> bytes:
    return local_path(url).read_bytes()


def open_read(url: str) -> BinaryIO:
    return open(local_path(url), "rb")


def exists(url: str) -> bool:
    return local_path(url).exists()


def list_names(url: str) -> list[str]:
    path = local_path(url)
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


def remove(url: str) -> None:
    local_path(url).unlink(missing_ok=True)


def make_dirs(url: str) -> None:
    local_path(url).mkdir(parents=True, exist_ok=True)


def temp_name(url: str) -> str:
    """A unique hidden sibling of ``url``: concurrent or retried writers never share one."""
    path = local_path(url)
    return str(path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"))


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def publish(temp_url: str, url: str) -> None:
    """Make a fully written temporary file visible under its final name, atomically."""
    os.replace(local_path(temp_url), local_path(url))


def write_atomic(url: str, data: bytes) -> None:
    tmp = temp_name(url)
    with open(local_path(tmp), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    publish(tmp, url)
