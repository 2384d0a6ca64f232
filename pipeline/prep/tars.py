"""WebDataset / img2dataset tar shards as input: one record per sample, images left in the tars.

img2dataset writes ``00000.tar`` … whose samples are ``KEY.jpg`` (or png/webp), ``KEY.txt``
(the caption) and ``KEY.json`` (metadata: url, caption, width, height, ...). A sample becomes a
record whose id is KEY, whose caption is the ``.txt`` (else the json's ``caption``), whose
boxes are the json's ``boxes`` when it carries them (our index's format), and whose image is a
reference to the image member's bytes: (tar URL, offset, size). The image stage reads just
that range, so image bytes never pass through the driver.

Listing a tar reads its headers and its small ``.txt``/``.json`` members, several tars at a
time. Locally tarfile seeks from header to header, skipping the image data. On S3 the tar is
streamed through once: a ranged GET per header would be a round trip per member (~30,000 per
img2dataset shard), each worth ~1 MB of streaming at S3's latency and bandwidth.

The spec is webdataset's: brace ranges and lists (``/data/{00000..00099}.tar``), ``::`` between
patterns; an entry that does not end in ``.tar`` is a folder whose ``*.tar`` are taken in name
order. Keys must be unique across the input (img2dataset's are: they start with the shard
number); a key seen again is dropped as ``duplicate_id``.

Dropped on read, with the reason:

- ``tar_missing``: a tar the spec names is not there (one row, no id);
- ``tar_truncated``: the file ends inside a member or before the end-of-archive marker: the
  sample it cut is dropped, or, when the cut fell between samples, one row without an id
  (whatever followed the cut is unknowable);
- ``tar_corrupt``: not a tar, or a header that is not a tar header: the rest of the tar is
  skipped (one row without an id; the samples before it are read);
- per sample: ``image_missing`` (no image member), ``missing_field`` (``caption``: no ``.txt``
  and no caption in the json), ``invalid_utf8`` (``.txt``), ``unparseable_record``
  (``.json``), and the caption checks every format shares.
"""

from __future__ import annotations

import logging
import re
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import braceexpand

from pipeline import storage
from pipeline.prep.records import (
    Drop,
    InputRecord,
    SeenIds,
    caption_problem,
    declared_size,
    is_text,
    origin_fields,
    parse_json,
    unique_ids,
)
from pipeline.storage import FileStat

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # a sample's image: the first of these it has
TEXT_EXTENSIONS = ("txt", "json")  # read while listing; everything else is only located
LISTING_THREADS = 8  # tars listed at once (I/O-bound: S3 round trips, disk seeks)
LISTING_ATTEMPTS = 3  # an I/O error re-lists the tar; its content decides drops, never a flaky read
BLOCK = tarfile.BLOCKSIZE
# tarfile's messages for a file that ends inside a chain of headers (a pax header, then the
# member's own): wrapped in a ReadError, they have lost their exception type.
_CUT_SHORT = ("empty header", "truncated header", "unexpected end of data")

# webdataset's key rule (tariterators.base_plus_ext): the key is the name up to the first dot of its
# last path component; webdataset itself is not imported on the driver (it imports torch).
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")

Tar = tuple[str, FileStat | None]  # URL, and its size and version (None: not there)


@dataclass(frozen=True)
class Member:
    offset: int  # of its data in the tar
    size: int
    data: bytes | None  # the content of .txt and .json members


@dataclass
class Sample:
    key: str
    members: dict[str, Member] = field(default_factory=dict)  # by lowercased extension
    problem: tuple[str, str] | None = None  # (reason, detail): the file ends inside this sample


@dataclass(frozen=True)
class TarListing:
    url: str
    samples: list[Sample]
    problem: tuple[str, str] | None  # (reason, detail): why the rest of the tar was not read


Lister = Callable[[list[Tar]], Iterable[TarListing]]  # tars → their listings, in order


def expand(spec: str) -> list[str]:
    """Webdataset's URL syntax: ``::`` between patterns, brace ranges and lists within each."""
    return [url for part in spec.split("::") if part.strip() for url in braceexpand.braceexpand(part.strip())]


def locate(spec: str) -> list[Tar]:
    """Every tar the spec names, in order, with its size and version; one listing per folder."""
    listings: dict[str, dict[str, FileStat]] = {}

    def files(folder: str) -> dict[str, FileStat]:
        if folder not in listings:
            listings[folder] = storage.list_files(folder)
        return listings[folder]

    tars: list[Tar] = []
    for url in expand(spec):
        if url.endswith(".tar"):
            tars.append((url, files(storage.parent(url)).get(url.rsplit("/", 1)[-1])))
        else:
            folder = url.rstrip("/")
            tars += [
                (f"{folder}/{name}", stat) for name, stat in files(folder).items() if name.endswith(".tar")
            ]
    return tars


def list_locally(tars: list[Tar]) -> Iterator[TarListing]:
    """The tars' listings, in order, ``LISTING_THREADS`` at a time in this process."""
    with ThreadPoolExecutor(LISTING_THREADS) as pool:
        yield from pool.map(list_tar, tars)


def read_tars(
    tars: list[Tar], max_caption_chars: int, list_tars: Lister = list_locally, seen: SeenIds | None = None
) -> Iterator[InputRecord | Drop]:
    """Every sample of every tar, in order, as a record or a drop; ordinals run across the tars;
    ``seen``: the ids seen so far (``records.unique_ids``)."""
    yield from unique_ids(_items(list_tars(tars), max_caption_chars), seen)


def _items(listings: Iterable[TarListing], max_caption_chars: int) -> Iterator[InputRecord | Drop]:
    ordinal = 0
    for listing in listings:
        for sample in listing.samples:
            yield sample_item(listing.url, sample, ordinal, max_caption_chars)
            ordinal += 1
        if listing.problem:
            yield Drop(ordinal, None, *listing.problem)
            ordinal += 1


def sample_item(tar: str, sample: Sample, ordinal: int, max_caption_chars: int) -> InputRecord | Drop:
    """One sample's members → a record whose image is a byte range of ``tar``, or a drop."""
    key, members = sample.key, sample.members
    if not is_text(key):
        return Drop(ordinal, None, "invalid_utf8", f"{tar}: member name {key!a}")
    if key.startswith("/") or ".." in key.split("/"):  # the Trust rule: such a name is no sample
        return Drop(ordinal, key, "unsafe_member_name", f"{tar}: member name {key!a}")
    if sample.problem:
        return Drop(ordinal, key, *sample.problem)
    meta = {}
    if "json" in members:
        try:
            meta = parse_json(members["json"].data)
        except ValueError as e:  # not JSON, not UTF-8, nested too deep
            return Drop(ordinal, key, "unparseable_record", f"{key}.json: {e}")
        if not isinstance(meta, dict):
            return Drop(ordinal, key, "unparseable_record", f"{key}.json: expected an object")
    image = next((members[ext] for ext in IMAGE_EXTENSIONS if ext in members), None)
    if image is None:
        return Drop(ordinal, key, "image_missing", f"{tar}: no {'/'.join(IMAGE_EXTENSIONS)} member for {key}")
    if "txt" in members:
        try:
            caption = members["txt"].data.decode("utf-8")
        except UnicodeDecodeError as e:
            return Drop(ordinal, key, "invalid_utf8", f"{key}.txt: {e}")
    else:
        caption = meta.get("caption")
    if caption is None:
        return Drop(ordinal, key, "missing_field", "caption")
    problem = caption_problem(caption, max_caption_chars)
    if problem:
        return Drop(ordinal, key, *problem)
    origin = origin_fields(meta) if meta else None
    return InputRecord(
        ordinal,
        key,
        tar,
        caption,
        meta.get("boxes"),
        image.offset,
        image.size,
        origin=origin,
        declared_size=declared_size(meta),
    )


def list_tar(tar: Tar) -> TarListing:
    """The samples of one tar, and what stopped the listing early, if anything."""
    url, stat = tar
    if stat is None:
        return TarListing(url, [], ("tar_missing", url))
    attempt = 1
    while True:
        try:
            return _list_tar(url, stat.size)
        except Exception as e:  # I/O (local or S3); format problems never get here
            if attempt == LISTING_ATTEMPTS:
                raise
            log.warning("%s: %s: %s; listing it again", url, type(e).__name__, e)
            time.sleep(2**attempt)
            attempt += 1


def _list_tar(url: str, size: int) -> TarListing:
    with storage.open_stream(url) as f:
        try:
            with tarfile.open(fileobj=f, mode="r:" if f.seekable() else "r|") as tar:
                samples, error = _samples(url, tar, size)
                end = tar.offset  # where the next header would be
        except tarfile.TarError as e:  # from tarfile.open: no tar header at byte 0
            return TarListing(url, [], ("tar_corrupt", f"{url}: not a tar ({e})"))
    if samples and samples[-1].problem:  # the cut is recorded on the sample it cut
        return TarListing(url, samples, None)
    return TarListing(url, samples, _end_problem(url, size, end, error))


def _samples(url: str, tar: tarfile.TarFile, size: int) -> tuple[list[Sample], tarfile.TarError | None]:
    """Members grouped into samples the webdataset way (consecutive members sharing a key), up to
    the end of the listing; a header error ends it and is returned."""
    samples: list[Sample] = []
    try:
        for info in tar:
            match = _KEY_EXT.match(info.name)
            if not info.isfile() or match is None:  # folders, links, files of no sample
                continue
            key, ext = match.group(1), match.group(2).lower()
            if not samples or samples[-1].key != key or ext in samples[-1].members:
                samples.append(Sample(key))
            if info.offset_data + info.size > size:
                samples[-1].problem = (
                    "tar_truncated",
                    f"{url}: the file ends at byte {size}, inside {info.name}",
                )
                break
            data = tar.extractfile(info).read() if ext in TEXT_EXTENSIONS else None
            samples[-1].members[ext] = Member(info.offset_data, info.size, data)
    except tarfile.TarError as e:
        return samples, e
    return samples, None


def _end_problem(url: str, size: int, end: int, error: Exception | None) -> tuple[str, str] | None:
    """Why the listing stopped at ``end``, unless that is the end-of-archive marker (a zero block).
    tarfile ends the iteration quietly at a bad or missing header; this tells those apart."""
    if end + BLOCK > size or str(error) in _CUT_SHORT:
        return "tar_truncated", (
            f"{url}: the file ends at byte {size} without an end-of-archive marker; "
            f"whatever followed byte {end} is lost"
        )
    if error is not None or storage.read_range(url, end, BLOCK) != bytes(BLOCK):
        reason = f" ({error})" if error is not None else ""
        return (
            "tar_corrupt",
            f"{url}: no valid tar header at byte {end}{reason}; its last {size - end} bytes are skipped",
        )
    return None
