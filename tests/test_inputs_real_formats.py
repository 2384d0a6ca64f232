"""ShareGPT4V caption files and Visual Genome region descriptions as input, written from the
generated corpus: the streamed JSON list, each reader alone, the ordinal slice (ShareGPT4V-1k),
then one data-prep run on a real Ray per format."""

import json
import re
import shutil
from pathlib import Path
from typing import get_args, get_type_hints

import pytest
import webdataset as wds

from pipeline.config import ConfigError, load_config
from pipeline.prep import inputs
from pipeline.prep.config import InputConfig, PrepConfig
from pipeline.prep.job import run
from pipeline.prep.jsonlist import BrokenList, parse_json_list, read_json_list
from pipeline.prep.records import Drop, InputRecord
from pipeline.prep.sharegpt4v import sharegpt4v_record
from pipeline.prep.visual_genome import image_files, regions_caption, vg_record
from pipeline.schema import clean_box
from pipeline.shards import check
from pipeline.synthetic import SyntheticConfig, write_corpus

REPO = Path(__file__).resolve().parents[1]
PROMPT = {"from": "human", "value": "<image>\nWhat is in this image? Describe it in detail."}


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# --- the streamed JSON list -----------------------------------------------------------------

ITEMS = [{"caption": 'é漢字 "quoted" \\ \U0001f600', "n": -12.5e3}, 67890, "x", [1, [2]], None, True, {}]


@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_json_list_items_whole_at_any_chunk_boundary(ensure_ascii):
    data = json.dumps(ITEMS, ensure_ascii=ensure_ascii, indent=1).encode()
    for size in range(1, 40):  # cuts inside numbers, escapes, multi-byte characters, literals
        assert list(parse_json_list(chunks(data, size))) == ITEMS
    assert list(parse_json_list([b" [ ] "])) == []


def test_json_list_is_read_as_it_is_consumed():
    data = json.dumps([{"id": i, "caption": "word " * 50} for i in range(20_000)]).encode()  # ~5 MB
    read = []
    items = parse_json_list(read.append(c) or c for c in chunks(data, 4096))
    assert next(items) == {"id": 0, "caption": "word " * 50}
    assert len(read) == 1  # json.load would have read all ~1,300 chunks first
    assert sum(1 for _ in items) == 19_999 and len(read) == len(chunks(data, 4096))


@pytest.mark.parametrize(
    "data, kept, reason",
    [
        (b'[{"a": 1}, {"b": "cut', 1, "json_truncated"),
        (b'[{"a": 1}, {"b": 2}', 2, "json_truncated"),
        (b'[{"a": 1}, ', 1, "json_truncated"),
        (b'[{"a": 1} {"b": 2}]', 1, "json_corrupt"),
        (b'[{"a": 1}, {"b": 2,}]', 1, "json_corrupt"),
    ],
)
def test_broken_json_list_keeps_the_items_before_the_break(data, kept, reason):
    items = []
    with pytest.raises(BrokenList) as e:
        items.extend(parse_json_list(chunks(data, 3)))
    assert (len(items), e.value.reason) == (kept, reason)


def test_read_json_list_records_the_break_and_refuses_a_file_that_is_no_list(tmp_path):
    (tmp_path / "cut.json").write_bytes(b'[1, 2, {"x": "')
    assert list(read_json_list(str(tmp_path / "cut.json"), "captions")) == [
        1,
        2,
        Drop(
            2,
            None,
            "json_truncated",
            "character 13: Unterminated string starting at; the items before it are kept",
        ),
    ]
    (tmp_path / "dict.json").write_text('{"images": []}')
    with pytest.raises(ValueError, match=r"^input.regions: .*dict.json: not a JSON list"):
        list(read_json_list(str(tmp_path / "dict.json"), "regions"))


# --- ShareGPT4V -------------------------------------------------------------------------------


def sharegpt4v_item(image, caption, item_id="1"):
    return {"id": item_id, "image": image, "conversations": [PROMPT, {"from": "gpt", "value": caption}]}


def test_sharegpt4v_record_takes_the_first_gpt_turn():
    item = sharegpt4v_item("coco/train2017/000000000009.jpg", "A long caption.\n\nIt goes on.")
    item["conversations"].append({"from": "gpt", "value": "A second answer."})
    assert sharegpt4v_record(item, 4, "s3://b/data", 1000) == InputRecord(
        4,
        "coco/train2017/000000000009.jpg",
        "s3://b/data/coco/train2017/000000000009.jpg",
        "A long caption.\n\nIt goes on.",
        None,
    )


@pytest.mark.parametrize(
    "item, reason, detail",
    [
        (["not", "an", "object"], "unparseable_record", "expected an object, got list"),
        ({"id": "1", "conversations": []}, "missing_field", "image"),
        ({"id": "1", "image": 7}, "invalid_image_ref", "7"),
        ({"id": "1", "image": "a.jpg\udcff"}, "invalid_utf8", "image"),
        (
            {"id": "1", "image": "a.jpg", "conversations": [PROMPT]},
            "missing_field",
            "caption (no gpt turn with a value in conversations)",
        ),
        (
            {"id": "1", "image": "a.jpg", "conversations": "A caption."},
            "missing_field",
            "caption (no gpt turn with a value in conversations)",
        ),
        (sharegpt4v_item("a.jpg", ["a", "list"]), "caption_not_string", "list"),
        (sharegpt4v_item("a.jpg", " \n "), "caption_empty", ""),
        (sharegpt4v_item("a.jpg", "x" * 1001), "caption_too_long", "1001 > 1000 characters"),
        (sharegpt4v_item("a.jpg", "caf\udce9"), "invalid_utf8", "caption"),
    ],
)
def test_sharegpt4v_bad_items(item, reason, detail):
    drop = sharegpt4v_record(item, 3, "/data", 1000)
    assert (drop.ordinal, drop.reason, drop.detail) == (3, reason, detail)


def test_sharegpt4v_ids_are_image_paths_and_a_slice_is_the_whole_run_cut(tmp_path):
    items = [sharegpt4v_item(f"sam/images/sa_{i}.jpg", f"Caption {i}.", item_id=str(i % 3)) for i in range(8)]
    items[5] = sharegpt4v_item("sam/images/sa_1.jpg", "The same picture again.")  # a repeat of item 1
    (tmp_path / "captions.json").write_text(json.dumps(items))
    (tmp_path / "images").mkdir()

    def read(*window):
        cfg = load_config(
            PrepConfig,
            None,
            [
                "input.format=sharegpt4v",
                "output=o",
                *window,
                f"input.captions={tmp_path}/captions.json",
                f"input.images={tmp_path}/images",
            ],
        )
        return list(inputs.read_input(cfg.input, inputs.locate(cfg.input), 1000, 16, 500))

    whole = read()
    assert [(i.ordinal, i.id, type(i).__name__) for i in whole] == [
        (n, f"sam/images/sa_{n if n != 5 else 1}.jpg", "Drop" if n == 5 else "InputRecord") for n in range(8)
    ]
    assert whole[5].reason == "duplicate_id"  # ids 0, 1, 2 repeat across items: only the picture counts
    held_out, train = read("input.limit=3"), read("input.skip=3")
    assert held_out == whole[:3] and train == whole[3:]  # the ShareGPT4V-1k split, with 3 for 1,000
    assert read("input.skip=2", "input.limit=2") == whole[2:4]


def test_ordinal_slice_stops_reading_after_its_last_input():
    read = []

    def items():
        for n in range(1_000_000):
            read.append(n)
            yield Drop(n, str(n), "x")

    assert [d.ordinal for d in inputs.ordinal_slice(items(), 10, 5)] == [10, 11, 12, 13, 14]
    assert len(read) == 16


# --- Visual Genome --------------------------------------------------------------------------


def region(phrase, x, y, w, h, region_id=0):
    return {"region_id": region_id, "image_id": 1, "x": x, "y": y, "width": w, "height": h, "phrase": phrase}


def test_vg_caption_is_a_sentence_per_distinct_phrase_with_its_box():
    regions = [
        region("man wearing a red shirt ", 10, 20, 30, 40),
        region("Man wearing a  red shirt", 0, 0, 5, 5),
        region("the sky is blue!", 0, 0, 100, 20),
        region(None, 1, 1, 2, 2),
        region("", 1, 1, 2, 2),
        "not a region",
        region("a dog", 5, 5, 10, None),
        region("tree", 1, 2, 3, 4),
    ]
    caption, boxes, left_out = regions_caption(regions, max_sentences=3)
    assert caption == "Man wearing a red shirt. The sky is blue! A dog."
    assert boxes == [
        {"box": [10, 20, 40, 60], "label": "man wearing a red shirt"},
        {"box": [0, 0, 100, 20], "label": "the sky is blue!"},
        {"box": [1, 1, 3, 3], "label": None},  # counted as box_label_invalid
        {"box": [1, 1, 3, 3], "label": None},
        {"box": None, "label": None},
        {"box": [5, 5, 10, None], "label": "a dog"},  # counted as box_malformed; its sentence stays
    ]
    assert left_out == {"box_repeated_phrase": 1, "box_sentence_cut": 1}  # counted, never lost

    caption, every, left_out = regions_caption(regions, max_sentences=3, keep_all=True)
    assert caption == "Man wearing a red shirt. The sky is blue! A dog." and left_out == {}
    assert every[:2] == [  # the repeated phrase's region too, labelled with its own phrase
        {"box": [10, 20, 40, 60], "label": "man wearing a red shirt"},
        {"box": [0, 0, 5, 5], "label": "Man wearing a red shirt"},
    ]
    assert every[-1] == {"box": [1, 2, 4, 6], "label": "tree"}  # beyond the last sentence: kept, labelled
    assert len(every) == len(boxes) + 2


def test_vg_records_find_images_in_either_folder(tmp_path):
    for folder, name in (("VG_100K", "1.jpg"), ("VG_100K_2", "2.jpg"), ("", "3.jpg"), ("VG_100K_2", "1.jpg")):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / name).write_bytes(b"")
    found = image_files(str(tmp_path))
    entry = {"id": 1, "regions": [region("a cat", 1, 2, 3, 4)]}
    for image_id, path in ((1, "VG_100K/1.jpg"), (2, "VG_100K_2/2.jpg"), (3, "3.jpg"), (4, "4.jpg")):
        record = vg_record({**entry, "id": image_id}, 0, found, str(tmp_path), 1000, 16)
        assert (record.id, record.image) == (str(image_id), str(tmp_path / path))
    assert record.caption == "A cat." and record.boxes == [{"box": [1, 2, 4, 6], "label": "a cat"}]


@pytest.mark.parametrize(
    "item, reason, detail",
    [
        ("an image", "unparseable_record", "expected an object, got str"),
        ({"regions": []}, "missing_field", "id"),
        ({"id": True, "regions": []}, "invalid_id", "True"),
        ({"id": 5}, "missing_field", "regions"),
        (
            {"id": 5, "regions": [region(None, 1, 1, 5, 5), region("  ", 1, 1, 5, 5)]},
            "missing_field",
            "caption (no region has a phrase)",
        ),
        ({"id": 5, "regions": [region("x" * 30, 1, 1, 5, 5)]}, "caption_too_long", "31 > 20 characters"),
    ],
)
def test_vg_bad_entries(item, reason, detail):
    drop = vg_record(item, 2, {}, "/vg", 20, 16)
    assert (drop.ordinal, drop.reason, drop.detail) == (2, reason, detail)


# --- config -----------------------------------------------------------------------------------


def test_every_format_the_config_names_has_one_registry_entry():
    assert set(get_args(get_type_hints(InputConfig)["format"])) == set(inputs.FORMATS)


def test_config_names_the_bad_key():
    for overrides, message in [
        (["input.format=sharegpt4v", "input.captions=c"], "input.images: required for format sharegpt4v"),
        (["input.format=visual_genome"], "input.regions: required for format visual_genome"),
        (
            ["input.format=visual_genome", "input.regions=r.json", "input.images=i", "input.captions=c.json"],
            "input.captions: not read by format visual_genome",
        ),
        (["input.index=x.jsonl", "input.keep_regions=all"], "input.keep_regions: not read by format index"),
        (
            ["input.format=sharegpt4v", "input.captions=c.json", "input.images=i", "input.instances=x.json"],
            "input.instances: not read by format sharegpt4v",
        ),
        (["input.index=x.jsonl", "input.skip=-1"], "input.skip: must be >= 0"),
        (["input.index=x.jsonl", "input.limit=0"], "input.limit: must be >= 1, got 0"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(PrepConfig, None, ["output=out", *overrides])


def test_locate_names_the_missing_file(tmp_path):
    cfg = load_config(
        PrepConfig,
        None,
        [
            "input.format=visual_genome",
            f"input.regions={tmp_path}/r.json",
            f"input.images={tmp_path}",
            "output=o",
        ],
    )
    with pytest.raises(FileNotFoundError, match="input.regions: .*r.json does not exist"):
        inputs.locate(cfg.input)
    (tmp_path / "r.json").write_text("[]")
    files = inputs.locate(cfg.input)
    assert inputs.identity(files) == [[str(tmp_path / "r.json"), 2, files[0][1].version]]
    assert inputs.default_source(cfg.input, files) == tmp_path.name


# --- data prep on Ray ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    write_corpus(str(out), SyntheticConfig(num_records=10, seed=5))
    return out


def _records(corpus: Path) -> list[dict]:
    return [json.loads(line) for line in (corpus / "records.jsonl").read_text().splitlines()]


def _prep(out, *overrides):
    return run(
        load_config(
            PrepConfig,
            REPO / "configs/prep/default.yaml",
            [f"output={out}", "samples_per_shard=4", *overrides],
        )
    )


def _metas(m) -> list[dict]:
    return [json.loads(s["json"]) for s in wds.WebDataset(m.shard_urls(), shardshuffle=False)]


@pytest.mark.integration
def test_prep_from_sharegpt4v(local_ray, corpus, tmp_path):
    records = _records(corpus)
    items = [sharegpt4v_item(r["image"], r["caption"], item_id="same") for r in records]
    items[3] = {"id": "x", "image": records[3]["image"], "conversations": [PROMPT]}  # no model turn
    items += [
        sharegpt4v_item(records[0]["image"], "Captioned twice."),
        sharegpt4v_item("images/not-there.jpg", "A picture nobody downloaded."),
        {"id": "x", "conversations": [PROMPT, {"from": "gpt", "value": "No image."}]},
    ]
    data = json.dumps(items, indent=1).encode()
    (tmp_path / "share-captioner.json").write_bytes(data + b"\n")
    (tmp_path / "cut.json").write_bytes(data[:-3])  # a download that stopped inside the last item
    for name in ("share-captioner.json", "cut.json"):
        m = _prep(
            tmp_path / name.split(".")[0],
            "input.format=sharegpt4v",
            f"input.captions={tmp_path}/{name}",
            f"input.images={corpus}",
        )
        totals = m.data["totals"]
        assert totals["inputs"] == 13 == totals["written"] + totals["dropped"]
        drops = {(d["ordinal"], d["reason"]) for d in m.dropped().to_pylist()}
        assert drops == {
            (3, "missing_field"),
            (10, "duplicate_id"),
            (11, "image_missing"),
            (12, "missing_field" if name == "share-captioner.json" else "json_truncated"),
        }
        assert m.data["input"] == {
            "format": "sharegpt4v",
            "captions": f"{tmp_path}/{name}",
            "images": str(corpus),
            "source": tmp_path.name,
        }
        assert check.verify(m) == [] and check.validate(m) == []
    by_id = {r["image"]: r for r in records}
    metas = _metas(m)
    assert sorted(meta["id"] for meta in metas) == sorted(r["image"] for i, r in enumerate(records) if i != 3)
    for meta in metas:
        assert meta["caption"] == by_id[meta["id"]]["caption"] and meta["regions"] == []


def write_visual_genome(corpus: Path, out: Path) -> dict[str, list[dict]]:
    """The corpus as Visual Genome: images as <id>.jpg in VG_100K/ and VG_100K_2/, a region per
    object phrased "the <colour> <shape> is <size>", plus "a <shape>" once more for the first object
    (VG repeats objects; its phrase ties with the first one's), and bad entries. Returns the
    regions of each image id that make it into the caption, in order."""
    records = _records(corpus)
    entries, expected = [], {}
    for i, r in enumerate(records):
        image_id = 1000 + i
        folder = out / "images" / ("VG_100K" if i % 2 else "VG_100K_2")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus / r["image"], folder / f"{image_id}.jpg")
        regions = []
        for b in r["boxes"]:
            size, colour, shape = b["label"].split()
            x0, y0, x1, y1 = b["box"]
            regions.append(region(f"the {colour} {shape} is {size}", x0, y0, x1 - x0, y1 - y0, len(regions)))
        regions.append({**regions[0], "phrase": f"a {r['boxes'][0]['label'].split()[2]}"})
        expected[str(image_id)] = regions
        entries.append({"id": image_id, "regions": regions})
    entries[0]["regions"] = entries[0]["regions"] + [region(None, 1, 1, 5, 5), region("a speck", 5, 5, 0, 9)]
    expected["1000"] = expected["1000"] + [region("a speck", 5, 5, 0, 9)]
    entries += [
        {"id": 1001, "regions": entries[1]["regions"]},
        {"id": 77, "regions": entries[2]["regions"]},
        {"id": 78, "regions": [region("", 1, 1, 2, 2)]},
        {"id": 79},
    ]
    (out / "region_descriptions.json").write_text(json.dumps(entries))
    return expected


@pytest.mark.integration
def test_prep_from_visual_genome_links_each_sentence_to_its_region(local_ray, corpus, tmp_path):
    expected = write_visual_genome(corpus, tmp_path / "vg")
    m = _prep(
        tmp_path / "ds",
        "input.format=visual_genome",
        f"input.images={tmp_path}/vg/images",
        f"input.regions={tmp_path}/vg/region_descriptions.json",
    )
    totals = m.data["totals"]
    assert totals["inputs"] == 14 == totals["written"] + totals["dropped"]
    assert {(d["id"], d["reason"]) for d in m.dropped().to_pylist()} == {
        ("1001", "duplicate_id"),
        ("77", "image_missing"),
        ("78", "missing_field"),
        ("79", "missing_field"),
    }
    assert totals["boxes_dropped_by_reason"] == {"box_degenerate": 1, "box_label_invalid": 1}
    assert m.data["input"]["source"] == "vg" and check.validate(m) == []
    metas = _metas(m)
    assert sorted(meta["id"] for meta in metas) == sorted(expected)
    for meta in metas:
        boxes = [
            ([r["x"], r["y"], r["x"] + r["width"], r["y"] + r["height"]], r["phrase"])
            for r in expected[meta["id"]]
        ]
        assert [(r["box"], r["label"], r["source"]) for r in meta["regions"]] == [  # 160 px images: unscaled
            ([float(v) for v in box], phrase, "annotation")
            for box, phrase in boxes
            if clean_box(box, meta["width"], meta["height"])[0]
        ]
        assert meta["sentences"] == [phrase[0].upper() + phrase[1:] + "." for _, phrase in boxes]
        first_chunks = {}
        for p in meta["phrases"]:
            if p["kind"] == "noun_chunk":
                first_chunks.setdefault(p["sentence"], p)
        labels = [r["label"] for r in meta["regions"]]
        for s, p in first_chunks.items():  # each region's sentence names it, the tied "a <shape>" too
            own = meta["sentences"][s][:-1].lower()
            assert p["region"] == (labels.index(own) if own in labels else None), (meta["sentences"][s], p)
        assert sum(p["region"] is not None for p in first_chunks.values()) == len(meta["regions"])
