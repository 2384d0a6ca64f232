"""The dataset's typed rows: what a shard, a drop and the totals hold, and their columns."""

import dataclasses
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.prep.records import DETAIL_CHARS, Drop
from pipeline.shards.stats import DropRow, ShardStats, Totals, schema, table


def _through_parquet(rows: pa.Table) -> list[dict]:
    out = io.BytesIO()
    pq.write_table(rows, out)
    return pq.read_table(io.BytesIO(out.getvalue())).to_pylist()


def _stats(name: str, samples: int, **reasons) -> ShardStats:
    return ShardStats(
        name=name,
        samples=samples,
        bytes=1000 * samples,
        sha256="ab" * 32,
        inputs=samples + 1,
        dropped=1,
        repaired=1,
        boxes_dropped=2,
        phrases=5,
        regions=3,
        linked_phrases=2,
        ambiguous_phrases=1,
        repaired_by_reason=reasons.get("repaired", {"mode:P": 1}),
        boxes_dropped_by_reason=reasons.get("boxes", {"box_outside": 2}),
        node="host-a",
    )


def test_shard_stats_round_trip_through_parquet_and_json():
    stats = _stats("shard-000000.tar", 4)
    [row] = _through_parquet(table(ShardStats, [stats]))
    per_reason = {"repaired_by_reason", "boxes_dropped_by_reason"}
    assert row == {k: v for k, v in dataclasses.asdict(stats).items() if k not in per_reason}
    assert ShardStats(**{**row, **{k: getattr(stats, k) for k in per_reason}}) == stats
    assert ShardStats(**json.loads(json.dumps(dataclasses.asdict(stats)))) == stats


def test_columns_are_the_documented_ones():
    assert schema(ShardStats).names == [
        *("name", "samples", "bytes", "sha256", "inputs", "dropped", "repaired", "boxes_dropped"),
        *("phrases", "regions", "linked_phrases", "ambiguous_phrases", "node"),
    ]
    assert schema(DropRow).names == ["ordinal", "id", "reason", "detail", "shard"]


def test_totals_sum_the_shards_and_count_the_drops_by_reason():
    shards = [
        _stats("shard-000000.tar", 4, boxes={"box_outside": 2, "box_inverted": 1}),
        _stats("shard-000001.tar", 2, repaired={"mode:CMYK": 3, "mode:P": 1}),
    ]
    drops = [DropRow(7, "x", "image_missing", "", None), DropRow(3, None, "caption_empty", "", "s")]
    drops.append(DropRow(9, "y", "caption_empty", "", "s"))
    totals = Totals.of(shards, drops)
    assert (totals.inputs, totals.written, totals.dropped, totals.bytes) == (9, 6, 3, 6000)
    assert (totals.phrases, totals.regions, totals.linked_phrases, totals.ambiguous_phrases) == (10, 6, 4, 2)
    assert totals.dropped_by_reason == {"caption_empty": 2, "image_missing": 1}
    assert totals.repaired_by_reason == {"mode:CMYK": 3, "mode:P": 2}
    assert list(totals.boxes_dropped_by_reason.items()) == [("box_inverted", 1), ("box_outside", 4)]


def test_a_drop_becomes_a_row_with_its_fields_made_safe():
    row = DropRow.of(Drop(5, "id\udc80", "caption_empty", "\ud800" + "x" * 500), "shard-000002.tar")
    assert row == DropRow(
        5, "id\\udc80", "caption_empty", ("\\ud800" + "x" * 500)[:DETAIL_CHARS], "shard-000002.tar"
    )
    [read] = _through_parquet(table(DropRow, [row]))
    assert read == dataclasses.asdict(row)
