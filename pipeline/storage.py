"""Where bytes live: local paths (or ``file://``) and ``s3://bucket/key``. Every read and write
of the pipeline goes through these few functions.

S3 goes through boto3 and the standard AWS configuration chain: credentials, region and an
S3-compatible endpoint (``AWS_ENDPOINT_URL``) come from the environment or ``~/.aws``; nothing
about them is passed around or written down. Transient errors are retried with exponential
backoff (botocore's "standard" mode, bounded), and so is a request that cannot connect or whose
answer stalls (``S3_CONNECT_S``, ``S3_READ_S``); permanent ones (no such bucket, access denied)
raise at once. A missing object raises ``FileNotFoundError``, as a missing file does.

Writes are atomic: :func:`open_write` makes the object visible only once it is whole (local:
a hidden temporary sibling renamed into place; S3: one PUT, or a multipart upload completed
after the last byte), and never when the writer fails.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import os
import re
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

_TEMP_NAME = re.compile(r"\.(.+)\.[0-9a-f]{12}\.tmp")  # open_write's temporary files
S3_ATTEMPTS = 8  # per request, with exponential backoff and jitter
# An S3 request that cannot connect in S3_CONNECT_S, or whose answer stops for S3_READ_S, is an
# attempt that failed (and is retried, as above): a stalled endpoint costs a read minutes, not
# forever. A shard that stalls longer is a straggler the prep pool copies elsewhere (prep/pool.py).
S3_CONNECT_S = 10
S3_READ_S = 60


class StorageError(OSError):
    """Storage that cannot be used (unsupported scheme, unreadable path)."""


@dataclass(frozen=True)
class FileStat:
    size: int
    version: str  # changes whenever the content does: the S3 ETag, or the local mtime in ns


def is_s3(url: str) -> bool:
    return url.startswith("s3://")


def local_path(url: str) -> Path:
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else url)
    if len(parsed.scheme) == 1:  # a Windows drive letter, not a scheme
        return Path(url)
    raise StorageError(f"{url}: storage scheme '{parsed.scheme}://' is not supported (local paths and s3://)")


def resolve(base_dir: str, ref: str) -> str:
    """A reference from an index (relative to the index's folder, absolute, or a URL) as a URL.
    ``file:///abs/x.jpg`` is the local path ``/abs/x.jpg``, never a name inside the index's folder."""
    if ":" not in ref:  # no scheme: a path (the driver resolves every record's: keep it cheap)
        return ref if ref.startswith("/") else _join(base_dir, ref)
    scheme = urlparse(ref).scheme
    if scheme == "file":
        return str(local_path(ref))
    if scheme or os.path.isabs(ref):
        return ref
    return _join(base_dir, ref)


def _join(base_dir: str, ref: str) -> str:
    """``ref`` (relative) under ``base_dir``: ``os.path.join`` on a POSIX path or an S3 prefix,
    at a tenth of its cost (the driver joins every record's image)."""
    return base_dir + ref if not base_dir or base_dir.endswith("/") else f"{base_dir}/{ref}"


def parent(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[0] if is_s3(url) else str(local_path(url).parent)


class TooLarge(OSError):
    """A file over the size limit of a bounded read (``read_bytes(url, limit)``)."""


def read_bytes(url: str, limit: int | None = None) -> bytes:
    """A whole file. With ``limit``, files from others (:func:`_read_regular`), and more than
    ``limit`` bytes raise :class:`TooLarge` having read at most ``limit + 1`` (one ranged GET on
    S3)."""
    if not is_s3(url):
        if limit is None:
            return local_path(url).read_bytes()
        data = _read_regular(local_path(url), limit)
    else:
        data = _s3_get(url, None if limit is None else f"bytes=0-{limit}")
    if limit is not None and len(data) > limit:
        raise TooLarge(f"{url}: more than {limit} bytes")
    return data


def _read_regular(path: Path, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of a regular file, and no more than its size says: a read
    that could block or never end is not started. The file is opened without blocking (a FIFO
    would wait for a writer) and checked once open; a size of 0 reads nothing, so a kernel
    file that looks regular (``/proc/kmsg``, whose read waits for the next log line) reads as
    empty."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:  # checked on the bare descriptor: open() of a folder's would raise and leak it
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "a directory, not a file", str(path))
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    with open(fd, "rb") as f:
        return f.read(min(info.st_size, limit + 1))


def is_regular_file(url: str) -> bool:
    """An S3 object, or a local regular file (not a folder, FIFO or device)."""
    if is_s3(url):
        return exists(url)
    with contextlib.suppress(OSError):
        return stat.S_ISREG(os.stat(local_path(url)).st_mode)
    return False


def read_range(url: str, offset: int, size: int) -> bytes:
    """``size`` bytes from ``offset`` (one member of a tar, say) without reading the rest of the
    file: a seek locally, one ranged GET on S3. A file that ends too soon raises ``OSError``."""
    if size == 0:
        return b""
    if not is_s3(url):
        with open(local_path(url), "rb") as f:
            f.seek(offset)
            data = f.read(size)
    else:
        data = _s3_get(url, f"bytes={offset}-{offset + size - 1}")
    if len(data) != size:
        raise OSError(f"{url}: {len(data)} of {size} bytes at offset {offset}; the file ends too soon")
    return data


def _s3_get(url: str, byte_range: str | None) -> bytes:
    """One GET of an object, or of ``byte_range`` of it; a range that starts past the end (an
    empty object, a file cut short) reads as no bytes, for the caller to judge."""
    from botocore.exceptions import ClientError

    bucket, key = _split(url)
    ranged = {} if byte_range is None else {"Range": byte_range}
    try:
        with _missing_as_file_not_found(url):
            return _s3().get_object(Bucket=bucket, Key=key, **ranged)["Body"].read()
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") != "InvalidRange":
            raise
        return b""


def open_read(url: str) -> BinaryIO:
    """A readable binary file. An S3 object is read into memory (indexes and shards, not datasets)."""
    return io.BytesIO(read_bytes(url)) if is_s3(url) else open(local_path(url), "rb")


def open_stream(url: str) -> BinaryIO:
    """A forward-only binary stream: shards are read as they download, never held whole."""
    if not is_s3(url):
        return open(local_path(url), "rb")
    bucket, key = _split(url)
    with _missing_as_file_not_found(url):
        return _s3().get_object(Bucket=bucket, Key=key)["Body"]


def exists(url: str) -> bool:
    if not is_s3(url):
        return local_path(url).exists()
    bucket, key = _split(url)
    with contextlib.suppress(FileNotFoundError), _missing_as_file_not_found(url):
        _s3().head_object(Bucket=bucket, Key=key)
        return True
    return False


def is_dir(url: str) -> bool:
    """A local folder, or an S3 prefix with at least one object under it."""
    if not is_s3(url):
        return local_path(url).is_dir()
    bucket, key = _split(url.rstrip("/") + "/")
    return _s3().list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("KeyCount", 0) > 0


def list_names(url: str) -> list[str]:
    """Names directly inside a folder (an S3 prefix); [] when there is none."""
    if not is_s3(url):
        path = local_path(url)
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    return sorted(name for name, _ in _s3_objects(url))


def list_files(url: str) -> dict[str, FileStat]:
    """The files directly inside a folder (an S3 prefix), by name, with size and version; one
    listing for the whole folder (S3: a request per 1,000 objects, not one per file)."""
    if not is_s3(url):
        path = local_path(url)
        stats = {p.name: p.stat() for p in path.iterdir() if p.is_file()} if path.is_dir() else {}
        return {name: FileStat(st.st_size, str(st.st_mtime_ns)) for name, st in sorted(stats.items())}
    return {name: FileStat(obj["Size"], obj["ETag"].strip('"')) for name, obj in sorted(_s3_objects(url))}


def remove(url: str) -> None:
    if not is_s3(url):
        local_path(url).unlink(missing_ok=True)
        return
    bucket, key = _split(url)
    _s3().delete_object(Bucket=bucket, Key=key)


def remove_empty_dir(url: str) -> None:
    if not is_s3(url):
        with contextlib.suppress(FileNotFoundError):
            local_path(url).rmdir()


def make_dirs(url: str) -> None:
    if not is_s3(url):  # S3 has no folders
        local_path(url).mkdir(parents=True, exist_ok=True)


def is_disk_full(e: BaseException) -> bool:
    """A write refused for space (a full disk, a quota): a condition of where the output goes,
    which no retry of the same write elsewhere in the job cures."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def free_bytes(url: str) -> int | None:
    """The space left for writes under a local folder (the nearest existing one); None on S3."""
    if is_s3(url):
        return None
    path = local_path(url).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def temp_target(name: str) -> str | None:
    """The file a local writer's temporary file (left behind only by a writer that was killed)
    was going to become; None for any other name."""
    match = _TEMP_NAME.fullmatch(name)
    return match.group(1) if match else None


@contextlib.contextmanager
def open_write(url: str) -> Iterator[BinaryIO]:
    """A binary file whose content appears at ``url`` only when the block ends without error."""
    if is_s3(url):
        bucket, key = _split(url)
        with tempfile.TemporaryFile() as spool:  # anonymous: a killed writer leaves nothing behind
            yield spool
            spool.seek(0)
            _s3().upload_fileobj(spool, bucket, key)  # multipart for large files, completed last
        return
    path = local_path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")  # unique per retry; see _TEMP_NAME
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(url: str, data: bytes) -> None:
    with open_write(url) as f:
        f.write(data)


def _s3_objects(url: str) -> Iterator[tuple[str, dict]]:
    bucket, key = _split(url.rstrip("/") + "/")
    for page in _s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key, Delimiter="/"):
        for obj in page.get("Contents", []):
            yield obj["Key"][len(key) :], obj


def _split(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    if not parsed.netloc:
        raise StorageError(f"{url}: expected s3://bucket/key")
    return parsed.netloc, parsed.path.lstrip("/")


def _s3():
    """This process's client (thread-safe; a forked DataLoader worker must not share its parent's)."""
    return _client(os.getpid())


@functools.cache
def _client(pid: int):
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=S3_CONNECT_S,
        read_timeout=S3_READ_S,
        retries={"max_attempts": S3_ATTEMPTS, "mode": "standard"},
    )
    return boto3.client("s3", config=config)


# Conditional writes: what a lock file needs (prep/lock.py), locally and on S3.


def create_exclusive(url: str, data: bytes) -> bool:
    """``url`` created with ``data`` unless it exists (then False), atomically."""
    if is_s3(url):
        return _s3_put(url, data, IfNoneMatch="*")
    path = local_path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with open(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True


def read_versioned(url: str) -> tuple[bytes | None, str | None]:
    """A small file's bytes and version (S3: its ETag; local: None); (None, None) when there is none."""
    if not is_s3(url):
        try:
            return local_path(url).read_bytes(), None
        except FileNotFoundError:
            return None, None
    bucket, key = _split(url)
    try:
        with _missing_as_file_not_found(url):
            obj = _s3().get_object(Bucket=bucket, Key=key)
    except FileNotFoundError:
        return None, None
    return obj["Body"].read(), obj["ETag"]


def replace_if_unchanged(url: str, stale: bytes, version: str | None, data: bytes) -> bool:
    """``url`` holds ``data`` instead of ``stale`` (read with ``version``); False if it no longer
    held ``stale``: another writer replaced it first."""
    if is_s3(url):
        return _s3_put(url, data, IfMatch=version)
    path = local_path(url)
    aside = path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.stale")
    try:
        os.rename(path, aside)  # atomic: of two jobs taking over, one moves the stale lock
    except FileNotFoundError:
        return False
    if aside.read_bytes() != stale:  # it moved a lock another job had just taken: put it back
        os.rename(aside, path)
        return False
    aside.unlink()
    return create_exclusive(url, data)


def _s3_put(url: str, data: bytes, **condition: str) -> bool:
    from botocore.exceptions import ClientError

    bucket, key = _split(url)
    try:
        _s3().put_object(Bucket=bucket, Key=key, Body=data, **condition)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        raise
    return True


@contextlib.contextmanager
def _missing_as_file_not_found(url: str) -> Iterator[None]:
    from botocore.exceptions import ClientError

    try:
        yield
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            raise FileNotFoundError(url) from e
        raise
