"""The generated corpus: deterministic, captions that tell the truth, broken records on demand."""

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.prep.index import read_index
from pipeline.prep.records import Drop
from pipeline.synthetic import BROKEN_KINDS, COLOURS, SHAPES, SIZES, SyntheticConfig, write_corpus

REPO = Path(__file__).resolve().parents[1]


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def _records(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "records.jsonl").read_text().splitlines()]


def test_same_seed_same_bytes_and_splits_differ(tmp_path):
    cfg = SyntheticConfig(num_records=12, num_broken=5)
    write_corpus(str(tmp_path / "a"), cfg)
    write_corpus(str(tmp_path / "b"), cfg)
    write_corpus(str(tmp_path / "c"), SyntheticConfig(num_records=12, num_broken=5, split="heldout"))
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    captions = {r["caption"] for r in _records(tmp_path / "a")}
    assert not captions & {r["caption"] for r in _records(tmp_path / "c")}


def test_captions_are_long_and_name_every_object_where_its_box_is(tmp_path):
    summary = write_corpus(str(tmp_path), SyntheticConfig(num_records=40, seed=3))
    assert summary.records == summary.good == 40 and summary.mean_caption_words >= 60
    for record in _records(tmp_path):
        caption = record["caption"]
        assert caption.count(". ") >= 3
        img = np.asarray(Image.open(tmp_path / record["image"]).convert("RGB"), dtype=int)
        for box in record["boxes"]:
            assert box["label"] in caption
            x0, y0, x1, y1 = box["box"]
            assert 0 <= x0 < x1 <= img.shape[1] and 0 <= y0 < y1 <= img.shape[0]
        # the object drawn last is not covered: the pixel at its box centre has its colour
        top = record["boxes"][-1]
        x0, y0, x1, y1 = top["box"]
        colour = COLOURS[top["label"].split()[1]]
        pixel = img[(y0 + y1) // 2, (x0 + x1) // 2]
        assert np.abs(pixel - colour).max() < 40, (record["id"], pixel, colour)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_broken_records_are_written_as_asked(tmp_path, fmt):
    cfg = SyntheticConfig(num_records=20, num_broken=2 * len(BROKEN_KINDS), index_format=fmt)
    summary = write_corpus(str(tmp_path), cfg)
    expected_kinds = set(BROKEN_KINDS) - (
        {"non_string_caption", "invalid_utf8", "unparseable_line"} if fmt == "parquet" else set()
    )
    assert set(summary.broken) == expected_kinds
    assert sum(summary.broken.values()) == 2 * len(BROKEN_KINDS)
    items = list(read_index(summary.index, max_caption_chars=20_000))
    assert len(items) == summary.records == 20 + 2 * len(BROKEN_KINDS)
    drops = [i for i in items if isinstance(i, Drop)]
    # dropped on read: caption, id and line problems; image problems surface later, in the workers
    on_read = {
        "empty_caption",
        "whitespace_caption",
        "non_string_caption",
        "huge_caption",
        "invalid_utf8",
        "duplicate_id",
        "missing_field",
        "unparseable_line",
    }
    assert len(drops) == sum(n for k, n in summary.broken.items() if k in on_read)


def test_huge_caption_is_one_mebibyte_and_bomb_is_small_on_disk(tmp_path):
    write_corpus(str(tmp_path), SyntheticConfig(num_records=3, num_broken=len(BROKEN_KINDS)))
    lines = (tmp_path / "records.jsonl").read_bytes().splitlines()

    def broken(kind: str) -> dict:
        [line] = [line for line in lines if f'-{kind}"'.encode() in line]
        return json.loads(line)

    assert len(broken("huge_caption")["caption"]) == 2**20
    path = tmp_path / broken("decompression_bomb")["image"]
    assert path.stat().st_size < 100_000
    assert Image.open(io.BytesIO(path.read_bytes())).size == (8000, 6000)


def test_the_eval_preset_names_the_generators_vocabulary():
    """configs/eval/synthetic.yaml is data the demo passes to eval; it must match what is drawn."""
    preset = yaml.safe_load((REPO / "configs/eval/synthetic.yaml").read_text())
    assert preset["attributes"] == {"size": list(SIZES), "colour": list(COLOURS), "shape": list(SHAPES)}
