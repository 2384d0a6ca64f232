"""Hostile inputs and outputs, built here: a bad record is a drop with a reason and the rest of
its shard is written (the planner and a worker run in-process; the Ray wiring is covered by
test_prep_job.py); an output folder is never one that holds the input, and overwrite deletes
only what our own manifest names."""

import dataclasses
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from pipeline import storage
from pipeline.config import BadInput, load_config
from pipeline.prep import output
from pipeline.prep.config import PrepConfig
from pipeline.prep.inputs import locate, read_input
from pipeline.prep.job import ShardPlanner, run
from pipeline.prep.worker import ShardTask, ShardWorker, each_or_alone
from pipeline.schema import SCHEMA_VERSION
from pipeline.shards.manifest import ManifestError, load_manifest
from pipeline.shards.stats import ShardStats


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
    assert sum(r.stats.samples for r in results) + len(drops) == len(lines)
    fates = {d.id if d.id is not None else f"#{d.ordinal}": (d.reason, d.detail) for d in drops}
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
    assert len(record.boxes) == 3 and record.boxes_left_out == {"box_over_limit": 99_997}
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "red.png")
    result = ShardWorker(cfg, cfg.output, "hostile", run_id="").process(ShardTask(0, [record]))
    assert result.stats.boxes_dropped_by_reason == {"box_over_limit": 99_997}
    assert result.stats.regions == 3  # every kept box is a region of the sample


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
    stats = ShardStats("shard-000001.tar", 1, 1, "0" * 64, 1, 0, 0, 0, 0, 0, 0, 0, {}, {}, "node")
    (out / "_progress" / "shard-000001.tar.json").write_text(
        json.dumps({"run_id": "r", "stats": dataclasses.asdict(stats), "drops": []})
    )
    output.prepare(str(out), "overwrite")
    assert sorted(os.listdir(out)) == sorted(theirs)


def test_a_manifest_that_names_files_outside_its_folder_is_refused(tmp_path):
    (tmp_path / "dataset.json").write_text(
        json.dumps({"schema": SCHEMA_VERSION, "shards": [{"name": "../x.tar"}]})
    )
    with pytest.raises(ManifestError, match="does not name a file in the dataset's folder"):
        load_manifest(str(tmp_path))
    with pytest.raises(ManifestError):  # and overwrite deletes nothing on its word
        output.prepare(str(tmp_path), "overwrite")


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


# --- one record never stops a job, whatever it holds, in whatever format it came ---------------


def test_no_record_can_stop_its_shard(tmp_path):
    """Hostile values in every field a row has: each costs its record, or only its box."""
    box = '{"box": [1, 1, 30, 30], "label": "red square"}'
    rows = [
        '{"id": "deep", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"id": ' + "9" * 5000 + ', "image": "good.png", "caption": "A red square."}',
        json.dumps({"id": "parens", "image": "good.png", "caption": "(" * 20_000}),
        json.dumps(
            {"id": "emoji", "image": "good.png", "caption": "A red \U0001f600" * 3 + "\U0001f600" * 5000}
        ),
        '{"id": "bigbox", "image": "good.png", "caption": "A red square.", "boxes": ['
        + box.replace("30, 30", "1" + "0" * 401 + ", 30")  # beyond any float
        + ", "
        + box.replace("30, 30", "9" * 5000 + ", 30")  # beyond Python's int parsing
        + ", "
        + box.replace("red square", "red \\udc80 square")
        + ", "
        + box
        + "]}",
    ]
    fates = prepare(tmp_path, rows)
    assert fates["#1"][0] == "unparseable_record" and "nested deeper" in fates["#1"][1]
    assert fates["#2"] == ("invalid_id", "inf")
    assert fates["parens"][0] == fates["emoji"][0] == "caption_token_too_long"
    assert "bigbox" not in fates  # written, with its one good box; the others counted
    stats = json.loads(next((tmp_path / "out/_progress").iterdir()).read_text())["stats"]
    assert stats["boxes_dropped_by_reason"] == {"box_not_finite": 2, "box_label_invalid": 1}


def _tar(path: Path, members: dict[str, bytes]) -> None:
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_a_tar_samples_json_and_name_cost_that_sample_only(tmp_path):
    jpg = b"\xff\xd8jpeg"  # read as a byte range; never decoded here
    _tar(
        tmp_path / "t.tar",
        {
            "a.jpg": jpg, "a.json": b'{"caption": "A fine one."}',
            "b.jpg": jpg, "b.json": b'{"caption": "Deep.", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "c.jpg": jpg, "c.json": b'{"caption": "Big.", "n": ' + b"9" * 5000 + b"}",
            "../d.jpg": jpg, "../d.txt": b"Outside.",
            "/abs/e.jpg": jpg, "/abs/e.txt": b"Absolute.",
            "f.jpg": jpg, "f.txt": b"The last fine one.",
        },
    )  # fmt: skip
    cfg = load_config(
        PrepConfig, None, ["input.format=webdataset", f"input.shards={tmp_path}/t.tar", "output=o"]
    )
    items = list(read_input(cfg.input, locate(cfg.input), cfg.max_caption_chars, 16, 500))
    fates = {item.ordinal: getattr(item, "reason", "record") for item in items}
    assert fates == {
        0: "record",
        1: "unparseable_record",
        2: "record",  # the number is read as inf: a metadata value, not kept in origin
        3: "unsafe_member_name",
        4: "unsafe_member_name",
        5: "record",
    }
    assert items[2].origin == {}


def test_a_json_list_item_nobody_can_parse_is_one_drop(tmp_path):
    good = '{"image": "a.jpg", "conversations": [{"from": "gpt", "value": "A fine caption."}]}'
    (tmp_path / "captions.json").write_text(
        "[" + ", ".join([good, "[" * 100_000 + "]" * 100_000, good.replace("a.jpg", "b.jpg")]) + "]"
    )
    cfg = load_config(
        PrepConfig,
        None,
        [
            "input.format=sharegpt4v",
            f"input.captions={tmp_path}/captions.json",
            f"input.images={tmp_path}",
            "output=o",
        ],
    )
    items = list(read_input(cfg.input, locate(cfg.input), cfg.max_caption_chars, 16, 500))
    assert [getattr(item, "reason", item.id) for item in items] == ["a.jpg", "unparseable_record", "b.jpg"]


def test_coco_bytes_that_are_not_utf8_drop_their_image_only(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b\udcff.jpg"}]
    captions = [{"image_id": 1, "caption": "A cat."}, {"image_id": 2, "caption": "A dog."}]
    data = json.dumps({"images": images, "annotations": captions}, ensure_ascii=False)
    (tmp_path / "captions.json").write_bytes(data.encode("utf-8", "surrogateescape"))  # a raw 0xff byte
    cfg = load_config(
        PrepConfig,
        None,
        [
            "input.format=coco",
            f"input.captions={tmp_path}/captions.json",
            f"input.images={tmp_path}",
            "output=o",
        ],
    )
    items = list(read_input(cfg.input, locate(cfg.input), cfg.max_caption_chars, 16, 500))
    assert [getattr(item, "reason", "record") for item in items] == ["record", "invalid_utf8"]
    assert items[1].id == "2"


def test_inputs_that_are_no_regular_file_or_no_parquet_are_refused_before_any_work(tmp_path):
    os.mkfifo(tmp_path / "index.jsonl")
    (tmp_path / "cut.parquet").write_bytes(b"PAR1" + bytes(100))
    for index, message in [
        ("index.jsonl", "is not a regular file"),
        ("cut.parquet", "not a readable Parquet"),
    ]:
        cfg = load_config(PrepConfig, None, [f"input.index={tmp_path}/{index}", "output=o"])
        with pytest.raises(BadInput, match=message):
            list(read_input(cfg.input, locate(cfg.input), cfg.max_caption_chars, 16, 500))


def test_a_file_whose_size_says_nothing_is_read_as_empty():
    """procfs files look regular and say they hold 0 bytes; /proc/kmsg's read never returns."""
    assert storage.read_bytes("/proc/self/status", limit=1000) == b""
