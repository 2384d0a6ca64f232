"""The papers' benchmarks, each written here in its published layout, read and scored by
``pipeline eval --benchmark NAME=PATH``; a file not in its layout is one line naming it."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline.__main__ import main
from pipeline.config import BadInput
from pipeline.eval.benchmarks import read_benchmark, score_retrieval
from pipeline.eval.data import EvalImage
from pipeline.eval.model import _covered, box_scores, embed_images, embed_texts, load_model
from pipeline.models import TINY_MODEL, FineGrainedCLIP, ModelConfig
from pipeline.training.export import write_export


def _jpg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = torch.randint(
        0, 256, (40 + seed, 60, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue())


def _urban1k(root: Path) -> Path:
    for i in range(1, 4):
        _jpg(root / "image" / f"{i}.jpg", i)
        (root / "caption" / f"{i}.txt").parent.mkdir(exist_ok=True)
        (root / "caption" / f"{i}.txt").write_text(f"A long caption of picture {i}.\nnot read\n")
    return root


def _sharegpt4v(root: Path, items: int) -> Path:
    rows = []
    for i in range(items):
        _jpg(root / "coco" / f"{i}.jpg", i)
        turns = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": f"Picture {i}."}]
        rows.append({"id": str(i), "image": f"coco/{i}.jpg", "conversations": turns})
    (root / "share-captioner.json").write_text(json.dumps(rows))
    return root / "share-captioner.json"


def _docci(root: Path) -> Path:
    rows = []
    for i, split in enumerate(["train", "test", "test", "qual_dev"]):
        _jpg(root / "images" / f"{split}_{i}.jpg", i)
        rows.append({"example_id": f"{split}_{i}", "split": split, "image_file": f"{split}_{i}.jpg",
                     "description": f"A detailed description {i}."})  # fmt: skip
    (root / "docci_descriptions.jsonlines").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _karpathy(root: Path, name: str, coco: bool) -> Path:
    entries = []
    for i, split in enumerate(["test", "train", "test", "restval"]):
        folder = "val2014" if coco else "flickr30k-images"
        _jpg(root / folder / f"{i}.jpg", i)
        sentences = [{"raw": f"Photo {i}, caption {j}.", "tokens": []} for j in range(5)]
        entry = {"filename": f"{i}.jpg", "split": split, "sentences": sentences, "imgid": i}
        entries.append({**entry, "filepath": folder} if coco else entry)
    (root / name).write_text(json.dumps({"images": entries, "dataset": name}))
    return root / name


def _dci(root: Path) -> Path:
    release = root / "densely_captioned_images"
    splits = {"train": ["sa_1.json"], "valid": ["sa_2.json"], "test": ["sa_3.json"]}
    for i in (1, 2, 3):
        _jpg(release / "photos" / f"sa_{i}.jpg", i)
        annotation = {"image": f"sa_{i}.jpg", "short_caption": f"Short {i}.", "extra_caption": f"Long {i}.",
                      "mask_data": {}, "summaries": {}}  # fmt: skip
        (release / "annotations").mkdir(exist_ok=True)
        (release / "annotations" / f"sa_{i}.json").write_text(json.dumps(annotation))
    (release / "splits.json").write_text(json.dumps(splits))
    return root


def test_each_reader_takes_its_published_layout(tmp_path):
    urban = read_benchmark("urban1k", str(_urban1k(tmp_path / "Urban1k")))
    assert [p.name for p in urban.images] == ["1.jpg", "2.jpg", "3.jpg"]
    assert urban.captions[0] == "A long caption of picture 1." and urban.image_of_text == [0, 1, 2]

    share = _sharegpt4v(tmp_path / "sharegpt4v", items=1003)
    assert len(read_benchmark("sharegpt4v", str(share)).images) == 1000  # the first 1,000: ShareGPT4V-1k
    assert read_benchmark("sharegpt4v:10k", str(share)).captions[-1] == "Picture 1002."

    docci = read_benchmark("docci", str(_docci(tmp_path / "docci")))
    assert [p.name for p in docci.images] == ["test_1.jpg", "test_2.jpg"]  # the test split only

    dci = read_benchmark("dci", str(_dci(tmp_path / "DCI")))
    assert [p.name for p in dci.images] == ["sa_1.jpg", "sa_2.jpg", "sa_3.jpg"]  # every split
    assert dci.captions[2] == "Short 3.\nLong 3."

    for name, coco in (("dataset_flickr30k.json", False), ("dataset_coco.json", True)):
        bench = read_benchmark("coco" if coco else "flickr30k", str(_karpathy(tmp_path / name, name, coco)))
        assert [p.name for p in bench.images] == ["0.jpg", "2.jpg"]  # test images, 5 captions each
        assert len(bench.captions) == 10 and bench.image_of_text == [0] * 5 + [1] * 5
        assert bench.captions[5] == "Photo 2, caption 0."


@pytest.mark.parametrize("benchmark, coco", [("flickr30k", False), ("coco", True)])
def test_karpathy_benchmarks_take_the_dataset_folder_as_clip_benchmark_does(tmp_path, benchmark, coco):
    """The folder a user downloaded: the split file in it or in a subfolder, images beside it or
    at the folder's top; the file itself stays accepted."""
    name = f"dataset_{benchmark}.json"
    flat = _karpathy(tmp_path / "flat", name, coco)
    nested = tmp_path / "nested"
    _karpathy(nested, name, coco)
    (nested / "annotations").mkdir()
    (nested / name).rename(nested / "annotations" / name)
    for path in (flat.parent, flat, nested):
        bench = read_benchmark(benchmark, str(path))
        assert [p.name for p in bench.images] == ["0.jpg", "2.jpg"] and all(p.is_file() for p in bench.images)
        assert len(bench.captions) == 10
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInput, match=f"{benchmark}=.*empty holds no {name}"):
        read_benchmark(benchmark, str(empty))


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(name=TINY_MODEL, pretrained=None, context_length=248)
    out = tmp_path_factory.mktemp("export")
    write_export(FineGrainedCLIP(cfg, with_pooler=True, with_region_head=False), cfg, out, "random init")
    return out


def test_one_eval_run_scores_every_benchmark_given(export, tmp_path):
    urban = _urban1k(tmp_path / "Urban1k")
    flickr = _karpathy(tmp_path / "flickr", "dataset_flickr30k.json", coco=False)
    out = tmp_path / "report"
    args = [
        "eval",
        "--model",
        str(export),
        "--benchmark",
        f"urban1k={urban}",
        "--benchmark",
        f"flickr30k={flickr}",
    ]
    assert main([*args, "--out", str(out), "device=cpu", "note=Read me first."]) == 0
    scores = json.loads((out / "metrics.json").read_text())["benchmarks"]
    assert set(scores) == {"urban1k", "flickr30k"}
    assert (out / "report.md").read_text().startswith("# Evaluation report\n\nRead me first.\n")
    assert scores["flickr30k"]["images"] == 2 and scores["flickr30k"]["captions"] == 10
    model = load_model(str(export), torch.device("cpu"))
    again = score_retrieval(model, read_benchmark("flickr30k", str(flickr)), 8, (1, 5, 10))
    assert scores["flickr30k"] == again
    assert set(again) == {f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)} | {"images", "captions"}
    assert "## flickr30k retrieval (%)" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda d: d.joinpath("k.json").write_text('{"dataset": "x"}'), "k.json: field 'images' is missing"),
        (lambda d: d.joinpath("k.json").write_text("[1"), "k.json is not a JSON file"),
        (
            lambda d: d.joinpath("k.json").write_text(
                json.dumps({"images": [{"split": "test", "filename": "a"}]})
            ),
            "images\\[0\\]: field 'sentences' is missing",
        ),
    ],
)
def test_a_file_not_in_its_layout_is_one_line_naming_it(export, tmp_path, capsys, write, message):
    write(tmp_path)
    args = ["eval", "--model", str(export), "--benchmark", f"flickr30k={tmp_path / 'k.json'}"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: benchmarks: "), lines
    assert re.search(message, lines[0]), lines[0]


def test_an_unknown_benchmark_is_refused_naming_the_known_ones(export, tmp_path, capsys):
    args = ["eval", "--model", str(export), "--benchmark", f"imagenet={tmp_path}", "--out", str(tmp_path)]
    assert main(args) == 2 and "'imagenet' is not one of urban1k" in capsys.readouterr().err


# --- FG-OVD --------------------------------------------------------------------------------------

BOXES = [(0, [2, 3, 30, 20]), (0, [20, 10, 35, 30]), (1, [0, 0, 60, 41])]  # (image, COCO x/y/w/h)


def _fgovd(root: Path, name: str, swap: bool) -> Path:
    """FG-OVD's own layout, one negative per box; ``swap`` makes that negative the true caption."""
    for i in (0, 1):
        _jpg(root / "images" / "train2017" / f"{i:012d}.jpg", i)
    images = [
        {"id": 10 + i, "file_name": f"train2017/{i:012d}.jpg", "width": 60, "height": 40 + i} for i in (0, 1)
    ]
    categories, annotations = [], []
    for k, (image, bbox) in enumerate(BOXES):
        true, negative = f"A small red object number {k}.", f"A large green object number {k}."
        categories += [{"id": 2 * k, "name": true}, {"id": 2 * k + 1, "name": negative}]
        ids = (2 * k + 1, 2 * k) if swap else (2 * k, 2 * k + 1)
        annotations.append({"id": k, "image_id": 10 + image, "bbox": bbox, "category_id": ids[0],
                            "neg_category_ids": [ids[1]], "area": 1})  # fmt: skip
    data = {"images": images, "annotations": annotations, "categories": categories}
    (root / name).write_text(json.dumps(data))
    return root / name


def test_fgovd_reads_both_layouts_with_the_true_caption_first(tmp_path):
    folder = tmp_path / "fgovd"
    _fgovd(folder, "1_attributes.json", swap=False)
    _fgovd(folder, "shuffle_negatives.json", swap=True)
    (folder / "notes.json").write_text("{}")  # not a benchmark file: not read
    suite = read_benchmark("fgovd", str(folder))
    assert list(suite.files) == ["hard", "trivial"]
    first = suite.files["hard"][0]
    assert first.image == folder / "images/train2017/000000000000.jpg" and first.box == (2, 3, 32, 23)
    assert first.texts == ("A small red object number 0.", "A large green object number 0.")
    assert suite.files["trivial"][0].texts == first.texts[::-1]

    rows = [{"img_path": "train2017/000000000001.jpg", "bbox": [1, 2, 3, 4], "pos_expression": ["a", "cat"],
             "neg_expression": ["a dog", ["the", "cow"]]}]  # fmt: skip
    llava = tmp_path / "h_attributes_llava.jsonl"
    llava.write_text("".join(json.dumps(r) + "\n" for r in rows))
    other = read_benchmark("fgovd", str(llava), fgovd_images=str(folder / "images"))
    assert other.files["hard"][0].texts == ("a cat", "a dog", "the cow")
    assert other.files["hard"][0].image == folder / "images/train2017/000000000001.jpg"


def test_fgovd_scores_each_box_against_its_own_negatives_on_every_region_path(export, tmp_path):
    """Each box has one negative and the second file swaps it with the true caption, so per region
    path the two accuracies sum to 100; the RoI path's equals a direct computation."""
    folder = tmp_path / "fgovd"
    hard = _fgovd(folder, "1_attributes.json", swap=False)
    _fgovd(folder, "shuffle_negatives.json", swap=True)
    out = tmp_path / "report"
    args = ["eval", "--model", str(export), "--benchmark", f"fgovd={folder}", "--out", str(out)]
    assert main([*args, "device=cpu", "region_paths=[roi, crop, pooler, head]"]) == 0
    scores = json.loads((out / "metrics.json").read_text())["benchmarks"]
    assert set(scores) == {"fgovd", "fgovd@crop", "fgovd@pooler"}  # the export has no region head
    assert scores["fgovd"]["region_path"] == "roi" and scores["fgovd"]["boxes"] == 6
    for path_scores in scores.values():
        assert path_scores["hard"] + path_scores["trivial"] == pytest.approx(100.0)

    model = load_model(str(export), torch.device("cpu"))
    data = json.loads(hard.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    wins = []
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        path = folder / "images" / data["images"][ann["image_id"] - 10]["file_name"]
        jpg = path.read_bytes()
        size = Image.open(io.BytesIO(jpg)).size
        image = EvalImage("x", jpg, *size, "", [(x, y, x + w, y + h)], [""])
        region = embed_images(model, [image], 1, ("roi",)).regions["roi"][0][0]
        true, negative = embed_texts(model, [names[ann["category_id"]], names[ann["neg_category_ids"][0]]])
        wins.append(bool(region @ true >= region @ negative))
    assert scores["fgovd"]["hard"] == round(100 * sum(wins) / len(wins), 2)
    assert "| checkpoint | region path | hard | trivial |" in (out / "report.md").read_text()


def test_the_pooler_path_pools_the_patches_under_the_box_queried_with_each_text():
    torch.manual_seed(0)
    model = FineGrainedCLIP(
        ModelConfig(name=TINY_MODEL, pretrained=None), with_pooler=True, with_region_head=False
    )
    size = model.clip.visual.image_size[0]
    covered = _covered(torch.tensor([0.0, 0.0, size / 2, size / 4]), (8, 8), size)
    assert covered.sum() == 8 and covered[:2, :4].all()  # the patch centres inside the box
    tiny = _covered(torch.tensor([size - 2.0, 1.0, size - 1.0, 2.0]), (8, 8), size)
    assert tiny.sum() == 1 and tiny[0, 7]  # no centre inside: the patch under the box's centre
    buffer = io.BytesIO()
    Image.new("RGB", (60, 40), "red").save(buffer, "JPEG")
    image = EvalImage("x", buffer.getvalue(), 60, 40, "", [(0, 0, 30, 10)], [""])
    embedded = embed_images(model.eval(), [image], 1, ("pooler",))
    texts = embed_texts(model, ["a red square", "a blue circle"])
    (scores,) = box_scores(model, embedded, "pooler", [texts])
    pooled = model.pooler(texts[None], embedded.box_patches[0][None])[0]
    expected = (torch.nn.functional.normalize(pooled, dim=-1) * texts).sum(-1)
    torch.testing.assert_close(scores, expected)
    assert embedded.box_patches[0].shape[0] == 8  # the top-left 4 × 2 patches of the 128 px input


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["annotations"][0].update(bbox=[1, 2, "x", 4]), r"annotations\[0\]: bbox is not four"),
        (
            lambda d: d["annotations"][1].update(neg_category_ids=[999]),
            r"annotations\[1\]: .*999 names nothing",
        ),
        (lambda d: d["images"][0].update(file_name="../../etc/passwd"), "is not a relative path"),
        (lambda d: d.pop("categories"), "field 'categories' is missing"),
    ],
)
def test_a_malformed_fgovd_file_is_one_line_naming_it(export, tmp_path, capsys, change, message):
    file = _fgovd(tmp_path, "1_attributes.json", swap=False)
    data = json.loads(file.read_text())
    change(data)
    file.write_text(json.dumps(data))
    args = ["eval", "--model", str(export), "--benchmark", f"fgovd={file}", "--out", str(tmp_path / "out")]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: benchmarks: ") and "1_attributes.json" in lines[0]
    assert re.search(message, lines[0]), lines[0]


def test_an_image_that_does_not_decode_is_one_line_naming_it(export, tmp_path, capsys):
    urban = _urban1k(tmp_path / "Urban1k")
    broken = urban / "image" / "2.jpg"
    broken.write_bytes(broken.read_bytes()[:200])  # a download cut short
    args = ["eval", "--model", str(export), "--benchmark", f"urban1k={urban}", "--out", str(tmp_path / "out")]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"image {broken} cannot be decoded" in lines[0], lines
