"""A dataset's manifest, written: ``dataset.json`` assembled in one place (:func:`manifest_json`)
and written last, after ``sizes.json`` and both tables, each atomically: a reader that sees
``dataset.json`` sees a complete dataset."""

from __future__ import annotations

import datetime as dt
import io
import json
from dataclasses import asdict, dataclass
from operator import attrgetter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.lineage import code_version
from pipeline.schema import SCHEMA_VERSION
from pipeline.shards.manifest import DROPPED_TABLE, MANIFEST_FILE, SHARDS_TABLE, SIZES_FILE
from pipeline.shards.stats import DropRow, ShardStats, Totals, table


@dataclass(frozen=True)
class Header:
    """What a manifest says of its job, ahead of what the job counted."""

    name: str
    run_id: str
    input: dict[str, Any]  # the input's description, with its source
    text: dict[str, Any]  # the text stage's provenance
    grounder: dict[str, Any]  # the grounder's
    config: dict[str, Any]  # the whole job config


def write_dataset(root: str, header: Header, shards: list[ShardStats], drops: list[DropRow]) -> None:
    """The manifest of a job's shards and drops, in the order readers see them: shards by name,
    drops by ordinal."""
    shards = sorted(shards, key=attrgetter("name"))
    drops = sorted(drops, key=attrgetter("ordinal"))
    write_manifest(root, manifest_json(header, shards, drops), shards, drops)


def manifest_json(header: Header, shards: list[ShardStats], drops: list[DropRow]) -> dict[str, Any]:
    """``dataset.json``'s content, its fields in the order ``docs/schema.md`` lists them."""
    return {
        "schema": SCHEMA_VERSION,
        "name": header.name,
        "run_id": header.run_id,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "input": header.input,
        "text": header.text,
        "grounder": header.grounder,
        "config": header.config,
        "totals": asdict(Totals.of(shards, drops)),
        "shards": [
            {"name": s.name, "samples": s.samples, "bytes": s.bytes, "sha256": s.sha256} for s in shards
        ],
        "shard_stats": [asdict(s) for s in shards],
    }


def write_manifest(
    root: str, manifest: dict[str, Any], shards: list[ShardStats], drops: list[DropRow]
) -> None:
    """Both tables and ``sizes.json``, then ``dataset.json`` last, each atomically."""
    sizes = {s.name: s.samples for s in shards}
    storage.write_atomic(f"{root}/{SIZES_FILE}", json.dumps(sizes, indent=1).encode())
    storage.write_atomic(f"{root}/{SHARDS_TABLE}", _parquet(table(ShardStats, shards)))
    storage.write_atomic(f"{root}/{DROPPED_TABLE}", _parquet(table(DropRow, drops)))
    body = json.dumps(manifest, indent=1, sort_keys=False, ensure_ascii=False).encode()
    storage.write_atomic(f"{root}/{MANIFEST_FILE}", body)


def _parquet(data: pa.Table) -> bytes:
    out = io.BytesIO()
    pq.write_table(data, out)
    return out.getvalue()
