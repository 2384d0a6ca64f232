"""Manifests: what other teams consume. See ``docs/schema.md``.

Per dataset folder: the shards, ``shards.parquet`` (one row per shard), ``dropped.parquet``
(one row per input that was not written), and ``dataset.json`` — written last and
atomically, so a reader that sees it sees a complete dataset.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.config import UserError
from pipeline.schema import SCHEMA_VERSION

MANIFEST_FILE = "dataset.json"
SHARDS_TABLE = "shards.parquet"
DROPPED_TABLE = "dropped.parquet"
SIZES_FILE = "sizes.json"  # {shard name: samples}: how open_clip_train counts a dataset's samples

SHARDS_SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("samples", pa.int64()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("inputs", pa.int64()),
        ("dropped", pa.int64()),
        ("repaired", pa.int64()),
        ("boxes_dropped", pa.int64()),
        ("phrases", pa.int64()),
        ("regions", pa.int64()),
        ("linked_phrases", pa.int64()),
        ("ambiguous_phrases", pa.int64()),
        ("node", pa.string()),
    ]
)
DROPPED_SCHEMA = pa.schema(
    [
        ("ordinal", pa.int64()),
        ("id", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("shard", pa.string()),
    ]
)


class ManifestError(UserError, ValueError):
    """A folder that is not a readable, complete dataset."""


def is_plain_name(name: object) -> bool:
    """A file name with no folder in it: what a manifest may name. ``../x.tar`` or ``/etc/x``
    in someone else's manifest must not make a reader open (or a rerun delete) a file outside
    the dataset's folder."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
    )


@dataclass(frozen=True)
class ShardEntry:
    name: str
    url: str
    samples: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """The reader API: shard URLs and counts for one dataset (training loaders start here)."""

    root: str
    data: dict[str, Any]

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def shards(self) -> list[ShardEntry]:
        return [
            ShardEntry(s["name"], f"{self.root}/{s['name']}", s["samples"], s["bytes"], s["sha256"])
            for s in self.data["shards"]
        ]

    @property
    def num_samples(self) -> int:
        return self.data["totals"]["written"]

    def shard_urls(self) -> list[str]:
        return [s.url for s in self.shards]

    def dropped(self) -> pa.Table:
        return pq.read_table(io.BytesIO(storage.read_bytes(f"{self.root}/{DROPPED_TABLE}")))


def load_manifest(path: str) -> Manifest:
    """Open a dataset by its folder or its ``dataset.json``."""
    root = path[: -len(MANIFEST_FILE) - 1] if path.endswith(f"/{MANIFEST_FILE}") else path.rstrip("/")
    url = f"{root}/{MANIFEST_FILE}"
    if not storage.exists(url):
        raise ManifestError(f"{root}: no {MANIFEST_FILE} (not a dataset, or its job has not finished)")
    try:
        data = json.loads(storage.read_bytes(url))
    except json.JSONDecodeError as e:
        raise ManifestError(f"{url}: not valid JSON: {e}") from e
    if data.get("schema") != SCHEMA_VERSION:
        raise ManifestError(f"{url}: schema {data.get('schema')!r}, this code reads {SCHEMA_VERSION}")
    bad = next(
        (s for s in data.get("shards", []) if not isinstance(s, dict) or not is_plain_name(s.get("name"))),
        None,
    )
    if bad is not None:
        raise ManifestError(
            f"{url}: shard entry {str(bad)[:100]!r} does not name a file in the dataset's folder"
        )
    return Manifest(root, data)


def write_manifest(root: str, manifest: dict[str, Any], shard_rows: list[dict], drops: list[dict]) -> None:
    """Write both tables and ``sizes.json``, then ``dataset.json`` last, each atomically."""
    sizes = {row["name"]: row["samples"] for row in shard_rows}
    storage.write_atomic(f"{root}/{SIZES_FILE}", json.dumps(sizes, indent=1).encode())
    storage.write_atomic(
        f"{root}/{SHARDS_TABLE}", _parquet(pa.Table.from_pylist(shard_rows, schema=SHARDS_SCHEMA))
    )
    storage.write_atomic(
        f"{root}/{DROPPED_TABLE}", _parquet(pa.Table.from_pylist(drops, schema=DROPPED_SCHEMA))
    )
    body = json.dumps(manifest, indent=1, sort_keys=False, ensure_ascii=False).encode()
    storage.write_atomic(f"{root}/{MANIFEST_FILE}", body)


def _parquet(table: pa.Table) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()
