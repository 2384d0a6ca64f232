import dataclasses
import io
import json
import re
import tarfile

import pytest
import webdataset as wds

from pipeline.schema import SCHEMA_VERSION, Phrase, Region, Sample, SchemaError
from pipeline.shards import ManifestError, check, load_manifest
from pipeline.shards.dataset import write_manifest
from pipeline.shards.reader import file_digest
from pipeline.shards.stats import DropRow
from pipeline.shards.writer import write_shard


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
    dropped = [DropRow(i, None, "caption_empty", "", None) for i in range(drops)]
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


def _manifest_cli(args, capsys) -> tuple[int, str]:
    from pipeline.__main__ import main

    status = main(["manifest", *args])
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda m: [m], "expected a JSON object, got list"),
        (lambda m: {**m, "shards": {"a": 1}}, "shards: expected a list"),
        (lambda m: {**m, "shards": [{**m["shards"][0], "samples": "3"}]}, r"shards\[0\].samples"),
        (lambda m: {**m, "shards": [{**m["shards"][0], "bytes": -1}]}, r"shards\[0\].bytes"),
        (lambda m: {**m, "shards": [{**m["shards"][0], "sha256": None}]}, r"shards\[0\].sha256"),
        (lambda m: {k: v for k, v in m.items() if k != "totals"}, "totals: missing"),
        (lambda m: {**m, "totals": [1, 2]}, "totals: expected an object"),
        (lambda m: {**m, "totals": {**m["totals"], "written": "6"}}, "totals.written: expected a count"),
        (lambda m: {**m, "totals": {**m["totals"], "inputs": 1.5}}, "totals.inputs: expected a count"),
        (lambda m: {**m, "totals": {**m["totals"], "dropped_by_reason": {"x": "y"}}}, "dropped_by_reason"),
        (lambda m: {**m, "input": "jsonl"}, "input: expected an object"),
        (lambda m: {**m, "name": 7}, "name: expected a string"),
    ],
)
@pytest.mark.parametrize("action", ["inspect", "verify", "validate"])
def test_a_manifest_not_of_its_documented_shape_is_one_line_naming_the_field(
    tmp_path, capsys, change, field, action
):
    _dataset(tmp_path)
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    status, err = _manifest_cli([action, str(tmp_path)], capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {tmp_path}") and re.search(field, err), err


@pytest.mark.parametrize("missing", ["input", "created", "text", "grounder", "name"])
def test_inspect_names_a_missing_field_and_validate_does_without_it(tmp_path, capsys, missing):
    _dataset(tmp_path)
    path = tmp_path / "dataset.json"
    data = json.loads(path.read_text())
    data["input"]["format"] = "jsonl"
    path.write_text(json.dumps({k: v for k, v in data.items() if k != missing}))
    status, err = _manifest_cli(["inspect", str(tmp_path)], capsys)
    assert status == 2 and err == f"error: {path}: {missing}: missing\n"
    assert _manifest_cli(["validate", str(tmp_path)], capsys)[0] == 1  # _samples are not v1 samples


@pytest.mark.parametrize(
    "text", ["5", "null", "[1, 2]", '"a string"', "true", '{"schema": 1, "regions": [5]}']
)
def test_validate_reports_a_sample_json_that_is_not_an_object_and_goes_on(tmp_path, capsys, text):
    m = _dataset(tmp_path, shards=1, per_shard=2)
    with tarfile.open(tmp_path / "shard-000000.tar", "w") as tar:
        for key, body in (("a", text.encode()), ("b", b'{"schema": 1, "phrases": ["x"]}')):
            for ext, data in (("jpg", b"jpg"), ("json", body)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    problems = check.validate(m)
    assert [p.split(":")[0] for p in problems] == ["shard-000000.tar/a", "shard-000000.tar/b"], problems
    status, err = _manifest_cli(["validate", str(tmp_path)], capsys)
    assert status == 1 and "Traceback" not in err


def test_a_sample_json_of_the_wrong_type_is_a_schema_error():
    for value in (5, None, [], "x", True):
        with pytest.raises(SchemaError, match="sample: expected an object"):
            Sample.from_json(value)
    base = {
        "schema": 1,
        "id": "i",
        "source": "s",
        "width": 4,
        "height": 4,
        "caption": "a",
        "sentences": ["a"],
    }
    with pytest.raises(SchemaError, match=r"regions\[0\]: expected an object, got int"):
        Sample.from_json({**base, "phrases": [], "regions": [5]})
    with pytest.raises(SchemaError, match=r"phrases\[1\]: expected an object, got str"):
        Sample.from_json(
            {
                **base,
                "regions": [],
                "phrases": [{"text": "a", "sentence": 0, "start": 0, "end": 1, "kind": "noun_chunk"}, "x"],
            }
        )


def test_a_samples_json_is_its_fields_in_order_boxes_as_lists():
    """``Sample.to_json`` writes field by field what ``dataclasses.asdict`` gives (boxes as
    lists): the shard bytes of every dataset written before it stay the same."""
    sample = Sample(
        "s",
        "test",
        200,
        100,
        "A dog. A ball.",
        ["A dog.", "A ball."],
        [Phrase("A dog", 0, 0, 5, "noun_chunk", 0), Phrase("A ball", 1, 7, 13, "noun_chunk")],
        [Region((1.0, 2.0, 30.5, 40.0), 1.0, "annotation", "dog")],
        origin={"url": "http://x/1.jpg", "original_width": 640, "nested": {"a": [1, 2]}},
    )
    expected = dataclasses.asdict(sample)
    for region in expected["regions"]:
        region["box"] = list(region["box"])
    assert json.dumps(sample.to_json()) == json.dumps(expected)
    assert Sample.from_json(json.loads(json.dumps(sample.to_json()))) == sample
