"""Hostile inputs and outputs, built here: a bad record is a drop with a reason and the rest of
its shard is written (the planner and a worker run in-process; the Ray wiring is covered by
test_prep_job.py); an output folder is never one that holds the input, and overwrite deletes
only what our own manifest names."""

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from pipeline.config import load_config
from pipeline.prep.config import PrepConfig
from pipeline.prep.inputs import locate, read_input
from pipeline.prep.job import ShardPlanner, _prepare_output, run
from pipeline.prep.worker import ShardTask, ShardWorker, each_or_alone
from pipeline.schema import SCHEMA_VERSION
from pipeline.shards.manifest import ManifestError, load_manifest


def prepare(folder: Path, rows: list) -> dict[str, tuple[str, str]]:
    """Every row's fate by id: ("written", "") or (reason, detail); a good record is added."""
    good = folder / "good.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(good)
    lines = [json.dumps({"id": "good", "image": "good.png", "caption": "A red square."}), *rows]
    index = folder / "index.jsonl"
    index.write_text("\n".join(lines) + "\n")
    cfg = load_config(
        PrepConfig,
        "configs/prep/default.yaml",
        [f"input.index={index}", f"output={folder}/out", "image.max_bytes=5000"],
    )
    worker = ShardWorker(cfg, cfg.output, "hostile", run_id="")
    planner = ShardPlanner(cfg.samples_per_shard, skip=set())
    results = [
        worker.process(task)
        for task in planner.tasks(read_input(cfg.input, locate(cfg.input), cfg.max_caption_chars, 16, 500))
    ]
    drops = planner.read_drops + [d for r in results for d in r.drops]
    assert sum(r.stats["samples"] for r in results) + len(drops) == len(lines)
    fates = {
        d["id"] if d["id"] is not None else f"#{d['ordinal']}": (d["reason"], d["detail"]) for d in drops
    }
    assert "good" not in fates
    return fates


def test_lone_surrogates_are_invalid_utf8_drops(tmp_path):
    rows = [
        '{"id": "s1", "image": "good.png", "caption": "A red \\ud800 square."}',
        '{"id": "\\udc80", "image": "good.png", "caption": "A red square."}',
        '{"id": "s3", "image": "go\\ud800od.png", "caption": "A red square."}',
    ]
    fates = prepare(tmp_path, rows)
    assert fates == {
        "s1": ("invalid_utf8", "caption"),
        "#2": ("invalid_utf8", "id '\\udc80'"),
        "s3": ("invalid_utf8", "image"),
    }


def test_reads_that_never_end_are_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo.jpg")
    (tmp_path / "big.jpg").write_bytes(b"\xff\xd8" + bytes(10_000))
    rows = [
        json.dumps({"id": "fifo", "image": "fifo.jpg", "caption": "A pipe."}),
        json.dumps({"id": "zero", "image": "/dev/zero", "caption": "Endless zeros."}),
        json.dumps({"id": "big", "image": "big.jpg", "caption": "Too many bytes."}),
    ]
    fates = prepare(tmp_path, rows)
    assert fates["fifo"][0] == fates["zero"][0] == "image_unreadable"
    assert "not a regular file" in fates["fifo"][1] and "not a regular file" in fates["zero"][1]
    assert fates["big"] == ("image_too_large", "file over image.max_bytes = 5000")


def test_boxes_beyond_max_boxes_are_cut_where_they_are_read_and_counted(tmp_path):
    box = {"box": [1, 1, 30, 30], "label": "red square"}
    (tmp_path / "index.jsonl").write_text(
        json.dumps({"id": "many", "image": "red.png", "caption": "Red.", "boxes": [box] * 100_000}) + "\n"
    )
    cfg = load_config(
        PrepConfig,
        "configs/prep/default.yaml",
        [f"input.index={tmp_path}/index.jsonl", f"output={tmp_path}/out", "image.max_boxes=3"],
    )
    [record] = read_input(cfg.input, locate(cfg.input), cfg.max_caption_chars, 16, cfg.image.max_boxes)
    assert len(record.boxes) == 3 and record.boxes_cut == 99_997
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "red.png")
    result = ShardWorker(cfg, cfg.output, "hostile", run_id="").process(ShardTask(0, [record]))
    assert result.stats["boxes_dropped_by_reason"] == {"box_over_limit": 99_997}
    assert result.stats["regions"] == 3  # every kept box is a region of the sample


def test_one_failing_record_fails_alone():
    def halve(batch: list[int]) -> list[float]:
        return [1 / x for x in batch]

    results = each_or_alone(halve, [1, 0, 4])
    assert results[0] == 1.0 and isinstance(results[1], ZeroDivisionError) and results[2] == 0.25
    assert each_or_alone(halve, [2, 4]) == [0.5, 0.25]


def test_overwrite_removes_only_what_our_manifest_and_records_name(tmp_path):
    out = tmp_path / "out"
    (out / "_progress").mkdir(parents=True)
    mine = [
        "shard-000000.tar",
        "shard-000001.tar",
        "dataset.json",
        "shards.parquet",
        "dropped.parquet",
        "sizes.json",
        ".shard-000002.tar.0123456789ab.tmp",
    ]
    theirs = ["input-00000.tar", "notes.txt", ".cache.tmp", "shard-000009.tar"]
    for name in mine + theirs:
        (out / name).write_bytes(b"x")
    entry = {"name": "shard-000000.tar", "samples": 1, "bytes": 1, "sha256": "0" * 64}
    (out / "dataset.json").write_text(json.dumps({"schema": SCHEMA_VERSION, "shards": [entry]}))
    (out / "_progress" / "shard-000001.tar.json").write_text(
        json.dumps({"run_id": "r", "stats": {"name": "shard-000001.tar"}, "drops": []})
    )
    _prepare_output(str(out), "overwrite")
    assert sorted(os.listdir(out)) == sorted(theirs)


def test_a_manifest_that_names_files_outside_its_folder_is_refused(tmp_path):
    (tmp_path / "dataset.json").write_text(
        json.dumps({"schema": SCHEMA_VERSION, "shards": [{"name": "../x.tar"}]})
    )
    with pytest.raises(ManifestError, match="does not name a file in the dataset's folder"):
        load_manifest(str(tmp_path))
    with pytest.raises(ManifestError):  # and overwrite deletes nothing on its word
        _prepare_output(str(tmp_path), "overwrite")


@pytest.mark.parametrize("output", ["/", "{tmp}", "{tmp}/..", "{tmp}/corpus"])
def test_an_output_that_would_hold_the_input_is_refused(tmp_path, output):
    (tmp_path / "corpus").mkdir()
    index = tmp_path / "corpus" / "records.jsonl"
    index.write_text("")
    cfg = load_config(
        PrepConfig,
        "configs/prep/default.yaml",
        [f"input.index={index}", f"output={output.format(tmp=tmp_path)}", "existing_output=overwrite"],
    )
    with pytest.raises(ValueError, match="output: .*(filesystem's root|holds the input)"):
        run(cfg)
    assert index.exists()


@pytest.mark.integration
def test_unreadable_s3_images_are_drops(s3, tmp_path):
    rows = [
        json.dumps({"id": "nobucket", "image": "s3://no-such-bucket-here/x.jpg", "caption": "Gone."}),
        json.dumps({"id": "nokey", "image": f"s3://{s3.bucket}/missing.jpg", "caption": "Gone."}),
    ]
    fates = prepare(tmp_path, rows)
    assert fates["nobucket"][0] == "image_unreadable" and "NoSuchBucket" in fates["nobucket"][1]
    assert fates["nokey"] == ("image_missing", f"s3://{s3.bucket}/missing.jpg")
