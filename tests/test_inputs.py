"""Input formats other than our index: img2dataset/WebDataset tars (local and S3) and COCO files,
made from the generated corpus. The readers alone first, then data prep on a real Ray."""

import json
import os
import re
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipeline import storage
from pipeline.config import ConfigError, load_config
from pipeline.prep import inputs
from pipeline.prep.coco import coco_items, join_captions
from pipeline.prep.config import PrepConfig
from pipeline.prep.job import _run_id, run
from pipeline.prep.records import Drop, InputRecord
from pipeline.prep.tars import expand, locate, read_tars
from pipeline.schema import clean_box
from pipeline.shards import check
from pipeline.synthetic import SyntheticConfig, write_corpus

REPO = Path(__file__).resolve().parents[1]
PER_TAR = 8
# What the tars below break, and what the job records for it.
TAR_DROPS = {
    "000000002": "image_missing",
    "000000005": "missing_field",
    "000010001": "image_corrupt",
    "000020005": "tar_truncated",
    None: "tar_missing",
}
LOST = {"000020006", "000020007"}  # after the cut in 00002.tar: unknowable
CAPTION_IN_JSON_ONLY = "000010003"


def _records(corpus: Path) -> list[dict]:
    return [json.loads(line) for line in (corpus / "records.jsonl").read_text().splitlines()]


HOSTILE_META = "000000003"
PLAIN_META = ("key", "url", "status", "original_width", "sha256", "exif")


def write_tars(corpus: Path, out: Path) -> dict[str, dict]:
    """img2dataset's layout (``00000.tar`` + ``00000.parquet`` + ``00000_stats.json``, keys
    shard + row) from the generated corpus, broken as ``TAR_DROPS`` says; 00003.tar is named by
    the spec but never written. Returns the source record of every key."""
    records, by_key = _records(corpus), {}
    out.mkdir(parents=True)
    for shard in range(3):
        keys = [f"{shard:05d}{i:04d}" for i in range(PER_TAR)]
        with wds.TarWriter(str(out / f"{shard:05d}.tar")) as writer:
            for key, record in zip(keys, records[shard * PER_TAR :]):
                by_key[key] = record
                jpg = (corpus / record["image"]).read_bytes()
                meta = {
                    "key": key,
                    "url": f"https://example.com/{record['id']}.jpg",
                    "caption": record["caption"],
                    "status": "success",
                    "boxes": record["boxes"],
                    "original_width": 640,
                    "sha256": f"{shard:064d}",
                    "exif": None,
                }
                if key == HOSTILE_META:  # kept: what any JSON reader reads back; the rest left out
                    meta |= {"nan": float("nan"), "big": 2**70, "nested": {"a": 1}, "\ud800": 1}
                sample = {"__key__": key, "jpg": jpg, "txt": record["caption"], "json": json.dumps(meta)}
                if key == "000000002":
                    del sample["jpg"]
                if key == "000000005":
                    del sample["txt"]
                    sample["json"] = json.dumps({**meta, "caption": None})
                if key == CAPTION_IN_JSON_ONLY:
                    del sample["txt"]
                if key == "000010001":
                    sample["jpg"] = jpg[: len(jpg) // 2]
                writer.write(sample)
        pq.write_table(pa.table({"key": keys, "status": ["success"] * PER_TAR}), out / f"{shard:05d}.parquet")
        (out / f"{shard:05d}_stats.json").write_text(json.dumps({"count": PER_TAR}))
    last = out / "00002.tar"
    with tarfile.open(last) as tar:
        cut = next(m for m in tar if m.name == "000020005.jpg")
    os.truncate(last, cut.offset_data + cut.size // 2)
    return by_key


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    write_corpus(str(out), SyntheticConfig(num_records=3 * PER_TAR, seed=11))
    return out


@pytest.fixture(scope="module")
def tars(corpus, tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    folder = tmp_path_factory.mktemp("wds") / "tars"
    return folder, write_tars(corpus, folder)


# --- the readers, without Ray ---------------------------------------------------------------


def test_expand_follows_webdataset_syntax():
    assert expand("/d/{00000..00002}.tar") == ["/d/00000.tar", "/d/00001.tar", "/d/00002.tar"]
    assert expand("s3://b/{a,b}/x-{8..10}.tar :: /local/") == [
        "s3://b/a/x-8.tar",
        "s3://b/a/x-9.tar",
        "s3://b/a/x-10.tar",
        "s3://b/b/x-8.tar",
        "s3://b/b/x-9.tar",
        "s3://b/b/x-10.tar",
        "/local/",
    ]


def test_locate_takes_folders_in_name_order_and_marks_missing_tars(tars):
    folder, _ = tars
    found = locate(f"{folder}::{folder}/{{00001..00003}}.tar")
    assert [(url.rsplit("/", 1)[-1], stat is not None) for url, stat in found] == [
        ("00000.tar", True),
        ("00001.tar", True),
        ("00002.tar", True),  # the folder: tars only
        ("00001.tar", True),
        ("00002.tar", True),
        ("00003.tar", False),
    ]
    assert found[0][1].size == (folder / "00000.tar").stat().st_size


def test_read_tars_records_point_at_the_image_bytes(tars, corpus):
    folder, by_key = tars
    items = list(read_tars(locate(f"{folder}/{{00000..00003}}.tar"), max_caption_chars=20_000))
    assert [i.ordinal for i in items] == list(range(len(items)))
    drops = {i.id: i.reason for i in items if isinstance(i, Drop)}
    image_drops = {
        k: v for k, v in TAR_DROPS.items() if v != "image_corrupt"
    }  # decoding is the image stage's job
    assert drops == image_drops
    records = [i for i in items if isinstance(i, InputRecord)]
    assert {r.id for r in records} == set(by_key) - set(drops) - LOST
    for r in records:
        source = by_key[r.id]
        jpg = (corpus / source["image"]).read_bytes()
        if r.id != "000010001":
            assert storage.read_range(r.image, r.image_offset, r.image_size) == jpg
        assert (r.caption, r.boxes) == (source["caption"], source["boxes"])
    truncated = next(i for i in items if isinstance(i, Drop) and i.reason == "tar_truncated")
    assert "inside 000020005.jpg" in truncated.detail


@pytest.mark.parametrize(
    "damage, reason, samples",
    [
        ("cut between samples", "tar_truncated", 2),
        ("cut inside a header", "tar_truncated", 2),
        ("garbage header", "tar_corrupt", 2),
        ("no end marker", "tar_truncated", 4),
        ("empty file", "tar_corrupt", 0),
        ("not a tar", "tar_corrupt", 0),
    ],
)
def test_damaged_tar_keeps_what_is_readable(tmp_path, damage, reason, samples):
    path = tmp_path / "00000.tar"
    with wds.TarWriter(str(path)) as writer:
        for i in range(4):
            writer.write({"__key__": f"k{i}", "jpg": os.urandom(2000), "txt": f"caption {i}"})
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        members = {m.name: m for m in tar}
    third = members["k2.jpg"].offset  # the third sample's first header: pax, then pax data, then ustar
    path.write_bytes(
        {
            "cut between samples": data[:third],
            "cut inside a header": data[: third + 2 * tarfile.BLOCKSIZE],
            "garbage header": data[:third] + b"x" * tarfile.BLOCKSIZE + data[third + tarfile.BLOCKSIZE :],
            "no end marker": data[: members["k3.txt"].offset_data + tarfile.BLOCKSIZE],
            "empty file": b"",
            "not a tar": b"<html>404</html>" * 100,
        }[damage]
    )
    items = list(read_tars(locate(str(tmp_path)), 1000))
    assert [type(i).__name__ for i in items] == ["InputRecord"] * samples + ["Drop"]
    assert (items[-1].reason, items[-1].id) == (reason, None)


@pytest.mark.integration
def test_read_range_local_and_s3(s3, tmp_path):
    data = bytes(range(256)) * 40
    (tmp_path / "blob").write_bytes(data)
    s3.upload(tmp_path, "range")
    for url in (str(tmp_path / "blob"), f"s3://{s3.bucket}/range/blob"):
        assert storage.read_range(url, 1000, 300) == data[1000:1300]
        assert storage.read_range(url, 5, 0) == b""
        for offset in (len(data) - 10, len(data) + 10):  # ends inside the range; starts past the end
            with pytest.raises(OSError, match="ends too soon"):
                storage.read_range(url, offset, 100)
    with pytest.raises(FileNotFoundError):
        storage.read_range(f"s3://{s3.bucket}/range/nothing", 0, 10)


@pytest.mark.integration
def test_tars_listed_from_s3_match_the_local_listing(s3, tars):
    folder, _ = tars
    s3.upload(folder, "listing/tars")
    local = list(read_tars(locate(f"{folder}/{{00000..00003}}.tar"), 20_000))
    remote = list(read_tars(locate(f"s3://{s3.bucket}/listing/tars/{{00000..00003}}.tar"), 20_000))
    strip = re.compile(r"^.*/tars/")

    def fields(i):  # what a record or drop says, its tar's location aside
        return (
            i.ordinal,
            i.id,
            getattr(i, "image_offset", None),
            getattr(i, "caption", None),
            getattr(i, "reason", None),
            strip.sub("", getattr(i, "detail", "")),
        )

    assert [fields(i) for i in remote] == [fields(i) for i in local]


def test_coco_conversion():
    captions = {
        "images": [
            {"id": 1, "file_name": "a.jpg"},
            {"id": 2, "file_name": "b.jpg"},
            {"id": 3, "file_name": "c.jpg"},
            {"id": 1, "file_name": "again.jpg"},
            {"file_name": "no-id.jpg"},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "a dog on  a sofa\n"},
            {"id": 11, "image_id": 1, "caption": "A brown dog sleeps!"},
            {"id": 12, "image_id": 1, "caption": "a dog on a sofa"},
            {"id": 13, "image_id": 2, "caption": "Two cats."},
            {"id": 14, "image_id": 99, "caption": "nobody's"},
            {"id": 15, "image_id": 2, "caption": None},
        ],
    }
    instances = {
        "categories": [{"id": 5, "name": "dog"}, {"id": 6, "name": "cat"}],
        "annotations": [
            {"id": 20, "image_id": 1, "bbox": [10, 20, 30, 40], "category_id": 5, "iscrowd": 0},
            {"id": 21, "image_id": 1, "bbox": [0, 0, 0, 5], "category_id": 5},
            {"id": 22, "image_id": 2, "bbox": [1, 1, 5, 5], "category_id": 6, "iscrowd": 1},
            {"id": 23, "image_id": 2, "bbox": [1, 1, 5, 5], "category_id": 7},
            {"id": 24, "image_id": 98, "bbox": [1, 1, 5, 5], "category_id": 6},
        ],
    }
    items = list(coco_items(captions, instances, "s3://b/coco/train2017", max_caption_chars=1000))
    assert items[0] == InputRecord(
        0,
        "1",
        "s3://b/coco/train2017/a.jpg",
        "A dog on a sofa. A brown dog sleeps!",
        [{"box": [10, 20, 40, 60], "label": "dog"}, {"box": [0, 0, 0, 5], "label": "dog"}],
    )
    assert items[1] == InputRecord(1, "2", "s3://b/coco/train2017/b.jpg", "Two cats.", [])
    assert [(d.ordinal, d.id, d.reason) for d in items[2:]] == [
        (2, "3", "missing_field"),
        (3, "1", "duplicate_id"),
        (4, None, "missing_field"),
        (5, "99", "unknown_image"),
        (6, "2", "caption_not_string"),
        (7, "2", "crowd_annotation"),
        (8, "2", "unknown_category"),
        (9, "98", "unknown_image"),
    ]
    assert "annotation 14" in items[5].detail
    assert list(coco_items(captions, None, "/x", 1000))[1].boxes is None  # no instances file: no boxes


def test_join_captions_makes_one_sentence_of_each():
    assert (
        join_captions(["a man riding a horse ", "", "A MAN on a horse?", "a man riding a horse"])
        == "A man riding a horse. A MAN on a horse?"
    )


def test_input_config_names_the_bad_key():
    base = ["output=out"]
    for overrides, message in [
        (["input.format=webdataset"], "input.shards: required for format webdataset"),
        (["input.format=coco", "input.captions=c.json"], "input.images: required for format coco"),
        (["input.index=x.jsonl", "input.shards=/d/{0..9}.tar"], r"input.shards: not read by format index"),
        (
            ["input.format=coco", "input.captions=c.json", "input.images=i", "input.index=x.jsonl"],
            "input.index: not read by format coco",
        ),
        (["input.format=tfrecord"], "input.format: 'tfrecord' is not one of"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(PrepConfig, None, base + overrides)


def test_identity_changes_with_any_tar(tmp_path, tars):
    folder, _ = tars
    copy = tmp_path / "tars"
    copy.mkdir()
    for name in ("00000.tar", "00001.tar"):
        (copy / name).write_bytes((folder / name).read_bytes())
        os.utime(copy / name, ns=(0, 0))  # written long ago
    cfg = load_config(PrepConfig, None, ["input.format=webdataset", f"input.shards={copy}", "output=o"])
    first = _run_id(cfg, inputs.locate(cfg.input))
    assert _run_id(cfg, inputs.locate(cfg.input)) == first
    data = bytearray((copy / "00001.tar").read_bytes())
    data[-1] ^= 1
    (copy / "00001.tar").write_bytes(bytes(data))  # same size, other bytes
    second = _run_id(cfg, inputs.locate(cfg.input))
    assert second != first
    (copy / "00002.tar").write_bytes((folder / "00000.tar").read_bytes())  # one more tar in the folder
    assert _run_id(cfg, inputs.locate(cfg.input)) not in (first, second)
    with pytest.raises(FileNotFoundError, match="input.shards: no tar found"):
        inputs.locate(
            load_config(
                PrepConfig, None, ["input.format=webdataset", f"input.shards={tmp_path}/x", "output=o"]
            ).input
        )


# --- data prep on Ray -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray(s3, local_ray):
    """conftest's, started after the S3 server, so that its workers see the endpoint."""
    yield


def _prep(out, *overrides):
    return run(
        load_config(
            PrepConfig,
            REPO / "configs/prep/default.yaml",
            [f"output={out}", "samples_per_shard=8", *overrides],
        )
    )


def _regions(meta: dict) -> list[tuple[list[float], str]]:
    return [(r["box"], r["label"]) for r in meta["regions"]]


def _expected_regions(boxes: list[dict], width: int, height: int) -> list[tuple[list[float], str]]:
    return [(list(clean), b["label"]) for b in boxes if (clean := clean_box(b["box"], width, height)[0])]


@pytest.fixture(scope="module")
def tar_dataset(local_ray, tars, tmp_path_factory):
    folder, _ = tars
    return _prep(
        tmp_path_factory.mktemp("out") / "ds",
        "input.format=webdataset",
        f"input.shards={folder}/{{00000..00003}}.tar",
    )


@pytest.mark.integration
def test_prep_from_local_tars(tar_dataset, tars):
    m, (folder, by_key) = tar_dataset, tars
    totals = m.data["totals"]
    assert totals["inputs"] == 3 * PER_TAR - len(LOST) + 1 == totals["written"] + totals["dropped"]
    assert totals["dropped_by_reason"] == dict(sorted((r, 1) for r in TAR_DROPS.values()))
    assert {d["id"]: d["reason"] for d in m.dropped().to_pylist()} == TAR_DROPS
    assert m.data["input"] == {
        "format": "webdataset",
        "shards": m.data["config"]["input"]["shards"],
        "tars": 4,
        "source": "tars",
    }
    assert (
        f"input     webdataset  shards={folder}/{{00000..00003}}.tar  tars=4  (source 'tars')"
        in check.inspect(m)
    )
    assert check.verify(m) == [] and check.validate(m) == []
    samples = list(wds.WebDataset(m.shard_urls(), shardshuffle=False))
    metas = [json.loads(s["json"]) for s in samples]
    assert {meta["id"] for meta in metas} == set(by_key) - set(TAR_DROPS) - LOST
    assert CAPTION_IN_JSON_ONLY in {meta["id"] for meta in metas}
    assert [s["txt"].decode() for s in samples] == [meta["caption"] for meta in metas]
    sizes = json.loads((Path(m.root) / "sizes.json").read_text())
    assert sizes == {shard.name: shard.samples for shard in m.shards}
    for meta in metas:
        source = by_key[meta["id"]]
        assert meta["caption"] == source["caption"]
        assert list(meta["origin"]) == sorted(PLAIN_META) and meta["origin"]["key"] == meta["id"]
        assert _regions(meta) == _expected_regions(
            source["boxes"], meta["width"], meta["height"]
        )  # 160 px: unscaled


@pytest.mark.integration
def test_prep_from_s3_tars_writes_the_same_shards(s3, tar_dataset, tars, tmp_path):
    folder, _ = tars
    s3.upload(folder, "img2dataset/tars")
    m = _prep(tmp_path / "ds", "input.format=webdataset", f"input.shards=s3://{s3.bucket}/img2dataset/tars/")
    assert (
        m.data["totals"]["inputs"] == tar_dataset.data["totals"]["inputs"] - 1
    )  # a folder names no missing tar
    assert [(s.name, s.sha256) for s in m.shards] == [(s.name, s.sha256) for s in tar_dataset.shards]


def write_coco(corpus: Path, out: Path) -> dict[str, dict]:
    """COCO files for the corpus's first 10 images: one caption per sentence, lowercased and without
    the full stop, and one instance per box, plus the bad entries the job must record.
    Returns the source record of every image id."""
    records = _records(corpus)[:10]
    labels = sorted({b["label"] for r in records for b in r["boxes"]})
    category = {label: i + 1 for i, label in enumerate(labels)}
    images = [{"id": 100 + i, "file_name": Path(r["image"]).name} for i, r in enumerate(records)]
    images += [{"id": 200, "file_name": "not-there.jpg"}, {"id": 201, "file_name": images[0]["file_name"]}]
    captions, instances = [], []
    for image, r in zip(images, records):
        for sentence in re.split(r"(?<=\.)\s+", r["caption"]):
            captions.append({"image_id": image["id"], "caption": sentence[0].lower() + sentence[1:-1]})
        for b in r["boxes"]:
            x0, y0, x1, y1 = b["box"]
            instances.append(
                {
                    "image_id": image["id"],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "category_id": category[b["label"]],
                    "iscrowd": 0,
                }
            )
    captions += [
        {"image_id": 200, "caption": "a picture that is not there"},
        {"image_id": 999, "caption": "an image nobody listed"},
    ]
    instances += [
        {"image_id": 100, "bbox": [1, 1, 20, 20], "category_id": 999, "iscrowd": 0},
        {"image_id": 100, "bbox": [5, 5, 0, 10], "category_id": 1, "iscrowd": 0},
        {"image_id": 101, "bbox": [0, 0, 50, 50], "category_id": 1, "iscrowd": 1},
    ]
    out.mkdir(parents=True)
    for i, ann in enumerate(captions + instances):
        ann["id"] = i
    (out / "captions_train.json").write_text(json.dumps({"images": images, "annotations": captions}))
    (out / "instances_train.json").write_text(
        json.dumps(
            {
                "images": images,
                "annotations": instances,
                "categories": [{"id": i, "name": label} for label, i in category.items()],
            }
        )
    )
    return {str(image["id"]): r for image, r in zip(images, records)}


@pytest.mark.integration
def test_prep_from_coco_uses_the_instance_boxes(local_ray, corpus, tmp_path):
    by_id = write_coco(corpus, tmp_path / "annotations")
    m = _prep(
        tmp_path / "ds",
        "input.format=coco",
        f"input.captions={tmp_path}/annotations/captions_train.json",
        f"input.instances={tmp_path}/annotations/instances_train.json",
        f"input.images={corpus}/images",
    )
    totals = m.data["totals"]
    assert (
        totals["inputs"] == 12 + 3 == totals["written"] + totals["dropped"]
    )  # images + annotations not attached
    assert {(d["id"], d["reason"]) for d in m.dropped().to_pylist()} == {
        ("200", "image_missing"),
        ("201", "missing_field"),
        ("999", "unknown_image"),
        ("100", "unknown_category"),
        ("101", "crowd_annotation"),
    }
    assert totals["boxes_dropped_by_reason"] == {"box_degenerate": 1}
    assert m.data["input"]["format"] == "coco" and m.data["input"]["source"] == corpus.name
    assert check.verify(m) == [] and check.validate(m) == []
    metas = [json.loads(s["json"]) for s in wds.WebDataset(m.shard_urls(), shardshuffle=False)]
    assert sorted(meta["id"] for meta in metas) == sorted(by_id)
    for meta in metas:
        source = by_id[meta["id"]]
        assert meta["caption"] == source["caption"]  # the sentences, joined back
        assert _regions(meta) == _expected_regions(source["boxes"], meta["width"], meta["height"])
        assert all(r["source"] == "annotation" for r in meta["regions"])
    assert sum(p["region"] is not None for meta in metas for p in meta["phrases"]) >= len(metas)
