"""The demo's held-out images in the papers' benchmark layouts, scored as the papers score them.

    python scripts/paper_tables.py runs/demo/corpus/heldout/records.jsonl OUT \
        --checkpoint beta=runs/demo/runs/beta [--checkpoint ...] [key=value ...]

writes ``OUT/Urban1k`` (``image/N.jpg``, ``caption/N.txt``: one long caption per image) and
``OUT/fgovd`` (FG-OVD's own files: ``1_attributes.json`` hard, ``2_attributes.json`` medium,
``3_attributes.json`` easy, ``shuffle_negatives.json`` trivial; each box's caption "a {label}."
against up to 10 captions with 1, 2 or 3 of its attributes swapped, or 10 other boxes' captions),
then runs ``pipeline eval --benchmark urban1k=... --benchmark fgovd=...`` on the checkpoints into
``OUT/report``. The generated corpus knows every box's attributes, so the negatives are exact;
the numbers say how our pipeline reads and scores the published layouts, nothing about the
papers' models (docs/evaluation.md, "The papers' tables on the demo").
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

import yaml

from pipeline.__main__ import main as pipeline_main
from pipeline.eval.metrics import make_trials

REPO = Path(__file__).resolve().parents[1]
ATTRIBUTES = yaml.safe_load((REPO / "configs/eval/synthetic.yaml").read_text())["attributes"]
NEGATIVES = 10  # per box, as FG-OVD's hard files
FILES = {"hard": "1_attributes.json", "medium": "2_attributes.json", "easy": "3_attributes.json"}


def write_layouts(records_file: Path, out: Path, seed: int = 0) -> tuple[Path, Path]:
    """(the Urban1k folder, the FG-OVD folder) made from a generated corpus's records."""
    records = [json.loads(line) for line in records_file.read_text().splitlines() if line.strip()]
    urban, fgovd = out / "Urban1k", out / "fgovd"
    for folder in (urban / "image", urban / "caption", fgovd / "images"):
        folder.mkdir(parents=True, exist_ok=True)
    boxes = []  # (image index, COCO x/y/w/h, label)
    for i, record in enumerate(records, 1):
        shutil.copyfile(records_file.parent / record["image"], urban / "image" / f"{i}.jpg")
        shutil.copyfile(records_file.parent / record["image"], fgovd / "images" / f"{i}.jpg")
        (urban / "caption" / f"{i}.txt").write_text(record["caption"].replace("\n", " ") + "\n")
        for region in record.get("boxes", []):
            x0, y0, x1, y1 = region["box"]
            boxes.append((i, [x0, y0, x1 - x0, y1 - y0], region["label"].lower()))
    images = [{"id": i, "file_name": f"{i}.jpg"} for i in range(1, len(records) + 1)]
    trials, _ = make_trials([label for *_, label in boxes], ATTRIBUTES, NEGATIVES, seed)
    for difficulty, name in FILES.items():
        chosen = [(t.box, t.negatives) for t in trials if t.difficulty == difficulty]
        _write_fgovd(fgovd / name, images, boxes, chosen)
    rng = random.Random(seed)
    labels = sorted({label for *_, label in boxes})
    shuffled = [
        (b, tuple(rng.sample([x for x in labels if x != boxes[b][2]], NEGATIVES))) for b in range(len(boxes))
    ]
    _write_fgovd(fgovd / "shuffle_negatives.json", images, boxes, shuffled)
    return urban, fgovd


def _write_fgovd(
    file: Path, images: list[dict], boxes: list, chosen: list[tuple[int, tuple[str, ...]]]
) -> None:
    """FG-OVD's layout: a category per caption, each annotation naming its true one and negatives."""
    category: dict[str, int] = {}

    def caption_id(label: str) -> int:
        return category.setdefault(f"a {label}.", len(category) + 1)

    annotations = [
        {
            "id": k,
            "image_id": boxes[b][0],
            "bbox": boxes[b][1],
            "category_id": caption_id(boxes[b][2]),
            "neg_category_ids": [caption_id(n) for n in negatives],
        }
        for k, (b, negatives) in enumerate(chosen, 1)
    ]
    categories = [{"id": i, "name": name} for name, i in category.items()]
    file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("records", type=Path, help="a generated corpus's records.jsonl")
    parser.add_argument("out", type=Path)
    parser.add_argument("--checkpoint", action="append", required=True, help="[name=]run folder or export")
    parser.add_argument("overrides", nargs="*", help="EvalConfig key=value")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    urban, fgovd = write_layouts(args.records, args.out)
    checkpoints = [x for c in args.checkpoint for x in ("--checkpoint", c)]
    benchmarks = ["--benchmark", f"urban1k={urban}", "--benchmark", f"fgovd={fgovd}"]
    return pipeline_main(
        ["eval", *checkpoints, *benchmarks, "--out", str(args.out / "report"), *args.overrides]
    )


if __name__ == "__main__":
    sys.exit(main())
