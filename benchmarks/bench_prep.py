"""Data-prep stage overhead: a worker's image and text stages against bare loops doing the same
library work, in one process on one core.

    python benchmarks/bench_prep.py [--records 2000]

Prints images/s of ``ShardWorker.image_stage`` (read, decode, check, cap, JPEG, box mapping)
against a bare PIL decode → resize → encode loop, and phrases/s of ``ShardWorker.text_stage``
(captions and box labels through spaCy) against a bare ``CaptionParser.parse`` loop, as ratios
(targets: image ≥ 0.8×, text ≥ 0.9×). The whole job against a bare loop, Ray included, is
``bench_prep_e2e.py``. Absolute numbers on shared machines mean little; the ratios are
measured in the same run on the same inputs.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

from PIL import Image

from pipeline.config import load_config
from pipeline.prep.config import PrepConfig
from pipeline.prep.records import InputRecord
from pipeline.prep.worker import Item, ShardWorker
from pipeline.synthetic import SyntheticConfig, write_corpus
from pipeline.text.parser import CaptionParser


def bare_images(paths: list[str], max_side: int, quality: int) -> float:
    start = time.perf_counter()
    for path in paths:
        img = Image.open(path).convert("RGB")
        scale = max_side / max(img.size)
        if scale < 1:
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
        img.save(io.BytesIO(), format="JPEG", quality=quality)
    return len(paths) / (time.perf_counter() - start)


def stage_images(worker: ShardWorker, records: list[InputRecord]) -> tuple[float, list[Item]]:
    items = [Item(r) for r in records]
    start = time.perf_counter()
    worker.image_stage(items)
    rate = len(items) / (time.perf_counter() - start)
    failed = [item.error for item in items if item.error]
    assert not failed, f"{len(failed)} images failed: {failed[:3]}"
    return rate, items


def bare_text(parser: CaptionParser, captions: list[str]) -> float:
    start = time.perf_counter()
    phrases = sum(len(h.phrases) for h in parser.parse(captions))
    return phrases / (time.perf_counter() - start)


def stage_text(worker: ShardWorker, items: list[Item]) -> float:
    start = time.perf_counter()
    worker.text_stage(items)
    return sum(len(item.hierarchy.phrases) for item in items) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_corpus(tmp, SyntheticConfig(num_records=args.records, image_size=384))
        rows = [json.loads(line) for line in Path(f"{tmp}/records.jsonl").read_text().splitlines()]
        records = [
            InputRecord(i, r["id"], f"{tmp}/{r['image']}", r["caption"], r.get("boxes"))
            for i, r in enumerate(rows)
        ]
        cfg = load_config(
            PrepConfig,
            "configs/prep/default.yaml",
            [
                f"input.index={tmp}/records.jsonl",
                f"output={tmp}/out",
                "image.max_side=224",
                "ray.io_threads=1",
            ],
        )
        worker = ShardWorker(cfg, f"{tmp}/out", "bench", run_id="")
        worker.parser.parse([r.caption for r in records[:32]])  # warm up, as a worker's first shard does
        image_rate, items = stage_images(worker, records)
        results = {
            "images/s": (image_rate, bare_images([r.image for r in records], 224, cfg.image.jpeg_quality)),
            "phrases/s": (stage_text(worker, items), bare_text(worker.parser, [r.caption for r in records])),
        }
    print(f"{args.records} records, one process: a worker's stage vs a bare loop")
    for name, (staged, bare) in results.items():
        print(f"{name:<10} stage {staged:9.1f}   bare loop {bare:9.1f}   ratio {staged / bare:5.2f}x")


if __name__ == "__main__":
    main()
