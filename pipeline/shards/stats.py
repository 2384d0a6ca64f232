"""What a dataset counts, typed: one shard's row (:class:`ShardStats`), one drop's row
(:class:`DropRow`) and the dataset's :class:`Totals`. Plain dataclasses until written: the
Parquet columns are their fields, in order (:func:`table`), and their JSON (``dataset.json``,
completion records) is :func:`dataclasses.asdict`, so each column is named once, here."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from pipeline.prep.records import Drop

Reasons = dict[str, int]  # a count per reason: JSON only, no Parquet column

ARROW_TYPES = {"int": pa.int64(), "str": pa.string(), "str | None": pa.string()}


@dataclass(frozen=True)
class ShardStats:
    """One shard's row of ``shards.parquet`` and its entry of the manifest's ``shard_stats``."""

    name: str
    samples: int
    bytes: int
    sha256: str
    inputs: int  # == samples + dropped
    dropped: int
    repaired: int
    boxes_dropped: int
    phrases: int
    regions: int
    linked_phrases: int
    ambiguous_phrases: int
    repaired_by_reason: Reasons
    boxes_dropped_by_reason: Reasons
    node: str  # the host name of the worker that wrote it


@dataclass(frozen=True)
class DropRow:
    """One row of ``dropped.parquet``: a :class:`~pipeline.prep.records.Drop` (its strings made
    safe where it was made) and the shard whose task held it (None: dropped on read)."""

    ordinal: int
    id: str | None
    reason: str
    detail: str
    shard: str | None

    @classmethod
    def of(cls, drop: Drop, shard: str | None) -> DropRow:
        return cls(drop.ordinal, drop.id, drop.reason, drop.detail, shard)


@dataclass(frozen=True)
class Totals:
    """The manifest's ``totals``: the shards' stats and the drops summed."""

    inputs: int  # == written + dropped
    written: int
    dropped: int
    dropped_by_reason: Reasons
    repaired_by_reason: Reasons
    boxes_dropped_by_reason: Reasons
    phrases: int
    regions: int
    linked_phrases: int
    ambiguous_phrases: int
    bytes: int

    @classmethod
    def of(cls, shards: list[ShardStats], drops: list[DropRow]) -> Totals:
        written = sum(s.samples for s in shards)
        return cls(
            inputs=written + len(drops),
            written=written,
            dropped=len(drops),
            dropped_by_reason=_sorted(Counter(d.reason for d in drops)),
            repaired_by_reason=_summed(s.repaired_by_reason for s in shards),
            boxes_dropped_by_reason=_summed(s.boxes_dropped_by_reason for s in shards),
            phrases=sum(s.phrases for s in shards),
            regions=sum(s.regions for s in shards),
            linked_phrases=sum(s.linked_phrases for s in shards),
            ambiguous_phrases=sum(s.ambiguous_phrases for s in shards),
            bytes=sum(s.bytes for s in shards),
        )


def _summed(tables: Iterable[Reasons]) -> Reasons:
    """Per-reason counts added up, by reason name."""
    total: Counter = Counter()
    for table in tables:
        total.update(table)
    return _sorted(total)


def _sorted(counts: Counter) -> Reasons:
    return dict(sorted(counts.items()))


def count_fields(cls: type) -> tuple[str, ...]:
    """The fields of ``cls`` that are counts (the manifest reader checks their type)."""
    return tuple(f.name for f in fields(cls) if f.type == "int")


def reason_fields(cls: type) -> tuple[str, ...]:
    """The fields of ``cls`` that are per-reason counts."""
    return tuple(f.name for f in fields(cls) if f.type == "Reasons")


def schema(cls: type) -> pa.Schema:
    """The Parquet columns of a row class: its fields in order, but the per-reason counts."""
    return pa.schema([(f.name, ARROW_TYPES[f.type]) for f in fields(cls) if f.type != "Reasons"])


def table(cls: type, rows: list) -> pa.Table:
    """``rows`` (of ``cls``) as a table of :func:`schema` (cls)."""
    return pa.Table.from_pylist([asdict(row) for row in rows], schema=schema(cls))
