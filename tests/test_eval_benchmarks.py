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
from pipeline.eval.benchmarks import read_benchmark, score_retrieval
from pipeline.eval.model import load_model
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


def test_each_reader_takes_its_published_layout(tmp_path):
    urban = read_benchmark("urban1k", str(_urban1k(tmp_path / "Urban1k")))
    assert [p.name for p in urban.images] == ["1.jpg", "2.jpg", "3.jpg"]
    assert urban.captions[0] == "A long caption of picture 1." and urban.image_of_text == [0, 1, 2]

    share = _sharegpt4v(tmp_path / "sharegpt4v", items=1003)
    assert len(read_benchmark("sharegpt4v", str(share)).images) == 1000  # the first 1,000: ShareGPT4V-1k
    assert read_benchmark("sharegpt4v:10k", str(share)).captions[-1] == "Picture 1002."

    docci = read_benchmark("docci", str(_docci(tmp_path / "docci")))
    assert [p.name for p in docci.images] == ["test_1.jpg", "test_2.jpg"]  # the test split only

    for name, coco in (("dataset_flickr30k.json", False), ("dataset_coco.json", True)):
        bench = read_benchmark("coco" if coco else "flickr30k", str(_karpathy(tmp_path / name, name, coco)))
        assert [p.name for p in bench.images] == ["0.jpg", "2.jpg"]  # test images, 5 captions each
        assert len(bench.captions) == 10 and bench.image_of_text == [0] * 5 + [1] * 5
        assert bench.captions[5] == "Photo 2, caption 0."


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
    assert main([*args, "--out", str(out), "device=cpu"]) == 0
    scores = json.loads((out / "metrics.json").read_text())["benchmarks"]
    assert set(scores) == {"urban1k", "flickr30k"}
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
