"""Manifests, read: what other teams consume. See ``docs/schema.md``.

Per dataset folder: the shards, ``shards.parquet`` (one row per shard), ``dropped.parquet``
(one row per input that was not written), and ``dataset.json`` — written last and
atomically (``dataset.py``), so a reader that sees it sees a complete dataset.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, fields
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.config import UserError
from pipeline.schema import SCHEMA_VERSION
from pipeline.shards.stats import Totals, count_fields, reason_fields

MANIFEST_FILE = "dataset.json"
SHARDS_TABLE = "shards.parquet"
DROPPED_TABLE = "dropped.parquet"
SIZES_FILE = "sizes.json"  # {shard name: samples}: how open_clip_train counts a dataset's samples


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


COUNTS = count_fields(Totals)
BY_REASON = reason_fields(Totals)


@dataclass(frozen=True)
class Manifest:
    """The reader API: shard URLs and counts for one dataset (training loaders start here).

    ``load_manifest`` has checked the type of every field it holds; a field a reader needs and
    the manifest lacks fails when read (:meth:`get`), naming it."""

    root: str
    data: dict[str, Any]

    def get(self, dotted: str) -> Any:
        """The field ``a.b``; a missing one is a :class:`ManifestError` naming it."""
        value: Any = self.data
        for i, part in enumerate(dotted.split(".")):
            if not isinstance(value, dict) or part not in value:
                where = ".".join(dotted.split(".")[: i + 1])
                raise ManifestError(f"{self.root}/{MANIFEST_FILE}: {where}: missing")
            value = value[part]
        return value

    @property
    def name(self) -> str:
        return self.get("name")

    @property
    def shards(self) -> list[ShardEntry]:
        return [
            ShardEntry(s["name"], f"{self.root}/{s['name']}", s["samples"], s["bytes"], s["sha256"])
            for s in self.data["shards"]
        ]

    @property
    def num_samples(self) -> int:
        return self.get("totals.written")

    @property
    def totals(self) -> Totals:
        """The whole ``totals`` section (inspect, verify); a missing field fails naming it."""
        return Totals(**{f.name: self.get(f"totals.{f.name}") for f in fields(Totals)})

    def shard_urls(self) -> list[str]:
        return [s.url for s in self.shards]

    def dropped(self) -> pa.Table:
        return pq.read_table(io.BytesIO(storage.read_bytes(f"{self.root}/{DROPPED_TABLE}")))


def load_manifest(path: str) -> Manifest:
    """Open a dataset by its folder or its ``dataset.json``; a manifest whose fields are not of
    their documented types (``docs/schema.md``) is a :class:`ManifestError` naming the field."""
    root = path[: -len(MANIFEST_FILE) - 1] if path.endswith(f"/{MANIFEST_FILE}") else path.rstrip("/")
    url = f"{root}/{MANIFEST_FILE}"
    if not storage.exists(url):
        raise ManifestError(f"{root}: no {MANIFEST_FILE} (not a dataset, or its job has not finished)")
    try:
        data = json.loads(storage.read_bytes(url))
    except (ValueError, RecursionError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise ManifestError(f"{url}: not valid JSON: {str(e)[:200]}") from e
    if not isinstance(data, dict):
        raise ManifestError(f"{url}: expected a JSON object, got {type(data).__name__}")
    if data.get("schema") != SCHEMA_VERSION:
        raise ManifestError(
            f"{url}: schema {str(data.get('schema'))[:50]!r}, this code reads {SCHEMA_VERSION}"
        )
    problem = _shape_problem(data)
    if problem:
        raise ManifestError(f"{url}: {problem}")
    return Manifest(root, data)


def _shape_problem(data: dict[str, Any]) -> str:
    """The first field of a manifest that is not of its type ("" if none). Required: ``shards``;
    the others are checked when present, and readers that need them ask :meth:`Manifest.get`."""
    shards = data.get("shards")
    if not isinstance(shards, list):
        return f"shards: expected a list, got {type(shards).__name__}"
    for i, entry in enumerate(shards):
        if not isinstance(entry, dict) or not is_plain_name(entry.get("name")):
            return f"shard entry {str(entry)[:100]!r} does not name a file in the dataset's folder"
        for key, kind in (("samples", _COUNT), ("bytes", _COUNT), ("sha256", _STR)):
            if not kind[0](entry.get(key)):
                return f"shards[{i}].{key}: expected {kind[1]}, got {str(entry.get(key))[:50]!r}"
    fields = {
        **{key: _STR for key in ("name", "run_id", "created", "code_version")},
        **{key: _OBJECT for key in ("input", "text", "grounder", "config", "totals")},
        **{f"totals.{key}": _COUNT for key in COUNTS},
        **{f"totals.{key}": _REASON_COUNTS for key in BY_REASON},
    }
    for dotted, (ok, expected) in fields.items():
        section, _, key = dotted.rpartition(".")
        holder = data.get(section) if section else data
        if isinstance(holder, dict) and key in holder and not ok(holder[key]):
            return f"{dotted}: expected {expected}, got {str(holder[key])[:50]!r}"
    return ""


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


_COUNT = (_is_count, "a count (an integer >= 0)")
_STR = (lambda value: isinstance(value, str), "a string")
_OBJECT = (lambda value: isinstance(value, dict), "an object")
_REASON_COUNTS = (
    lambda value: isinstance(value, dict) and all(_is_count(v) for v in value.values()),
    "an object of counts",
)
