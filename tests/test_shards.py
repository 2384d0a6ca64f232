import json
import tarfile

import pytest
import webdataset as wds

from pipeline.schema import SCHEMA_VERSION
from pipeline.shards import ManifestError, check, load_manifest
from pipeline.shards.manifest import write_manifest
from pipeline.shards.writer import file_digest, write_shard


def _samples(n):
    return [(f"k{i:03d}", f"jpg-{i}".encode(), {"id": str(i), "caption": f"Sample {i}."}) for i in range(n)]


def test_shard_is_deterministic_whole_and_readable_by_webdataset(tmp_path):
    a = write_shard(f"{tmp_path}/a.tar", _samples(5))
    b = write_shard(f"{tmp_path}/b.tar", _samples(5))
    assert (a.samples, a.sha256) == (5, b.sha256)
    assert file_digest(f"{tmp_path}/a.tar") == (a.bytes, a.sha256)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar", "b.tar"]  # no temp files left
    got = list(wds.WebDataset(str(tmp_path / "a.tar"), shardshuffle=False))
    assert [s["__key__"] for s in got] == [f"k{i:03d}" for i in range(5)]
    assert json.loads(got[2]["json"]) == {"id": "2", "caption": "Sample 2."} and got[2]["jpg"] == b"jpg-2"
    assert got[2]["txt"] == b"Sample 2."
    with tarfile.open(tmp_path / "a.tar") as tar:
        assert {m.mtime for m in tar.getmembers()} == {0}


def _dataset(tmp_path, shards=2, per_shard=3, drops=1):
    rows = []
    for s in range(shards):
        f = write_shard(f"{tmp_path}/shard-{s:06d}.tar", _samples(per_shard))
        rows.append({"name": f.name, "samples": f.samples, "bytes": f.bytes, "sha256": f.sha256})
    written = shards * per_shard
    manifest = {
        "schema": SCHEMA_VERSION,
        "name": "t",
        "created": "now",
        "code_version": "test",
        "input": {"index": "i.jsonl", "source": "s"},
        "text": {},
        "grounder": {},
        "totals": {
            "inputs": written + drops,
            "written": written,
            "dropped": drops,
            "bytes": 0,
            "phrases": 0,
            "regions": 0,
            "linked_phrases": 0,
            "ambiguous_phrases": 0,
            "dropped_by_reason": {},
            "repaired_by_reason": {},
            "boxes_dropped_by_reason": {},
        },
        "shards": rows,
    }
    dropped = [
        {"ordinal": i, "id": None, "reason": "caption_empty", "detail": "", "shard": None}
        for i in range(drops)
    ]
    write_manifest(str(tmp_path), manifest, [], dropped)
    return load_manifest(str(tmp_path))


def test_manifest_reader_api_and_verify(tmp_path):
    m = _dataset(tmp_path)
    assert m.num_samples == 6
    assert m.shard_urls() == [f"{tmp_path}/shard-000000.tar", f"{tmp_path}/shard-000001.tar"]
    assert load_manifest(f"{tmp_path}/dataset.json").shards == m.shards
    assert check.verify(m) == []
    assert m.dropped().column("reason").to_pylist() == ["caption_empty"]


def test_verify_catches_tampering_and_missing_shards(tmp_path):
    m = _dataset(tmp_path)
    with open(tmp_path / "shard-000000.tar", "r+b") as f:
        f.seek(600)
        f.write(b"X")
    (tmp_path / "shard-000001.tar").unlink()
    problems = check.verify(m)
    assert len(problems) == 2
    assert "shard-000000.tar" in problems[0] and "sha256" in problems[0]
    assert problems[1] == "shard-000001.tar: missing"


def test_validate_reports_schema_violations(tmp_path):
    m = _dataset(tmp_path, shards=1, per_shard=2)
    problems = check.validate(m)
    assert len(problems) == 2 and "schema: missing" in problems[0]


def test_folder_without_manifest_is_not_a_dataset(tmp_path):
    with pytest.raises(ManifestError, match="no dataset.json"):
        load_manifest(str(tmp_path))
