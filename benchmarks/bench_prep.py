"""Data-prep stage overhead: Ray Data stages vs bare loops doing the same work, one process.

    python benchmarks/bench_prep.py [--records 2000] [--cpus 1]

Prints phrases/s of the Ray text stage vs a bare ``CaptionParser.parse`` (``nlp.pipe``)
loop, and images/s of the Ray image stage vs a bare PIL decode → resize → encode loop, as
ratios (target ≥ 0.8×). Ray gets ``--cpus`` logical CPUs and one actor; the bare loops run
on one core, so ``--cpus 1`` is the like-for-like comparison. Absolute numbers on shared
machines mean little; the ratios are measured in the same run on the same inputs.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time

import ray
from PIL import Image

from pipeline.prep.config import ImageConfig
from pipeline.prep.stages import TextStage, image_stage
from pipeline.synthetic import SyntheticConfig, write_corpus
from pipeline.text import CaptionParser, TextConfig

IMAGE_BATCH, TEXT_BATCH = 32, 256


def bare_images(paths: list[str], cfg: ImageConfig) -> float:
    start = time.perf_counter()
    for path in paths:
        img = Image.open(path).convert("RGB")
        scale = cfg.max_side / max(img.size)
        if scale < 1:
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
        img.save(io.BytesIO(), format="JPEG", quality=cfg.jpeg_quality)
    return len(paths) / (time.perf_counter() - start)


def ray_images(rows: list[dict], cfg: ImageConfig) -> float:
    def run(rows: list[dict]) -> int:
        ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // IMAGE_BATCH))
        ds = ds.map_batches(image_stage, fn_kwargs={"cfg": cfg}, batch_format="numpy",
                            batch_size=IMAGE_BATCH, num_cpus=1)
        return sum(1 for r in ds.iter_rows() if not r["error"])

    run(rows[:IMAGE_BATCH])  # warm up: the worker process starts and imports once per job, not per image
    start = time.perf_counter()
    n = run(rows)
    assert n == len(rows), f"{len(rows) - n} images failed"
    return n / (time.perf_counter() - start)


def bare_text(captions: list[str], cfg: TextConfig) -> float:
    parser = CaptionParser(cfg)
    parser.parse(captions[:32])  # warm up, as the actor's first batch does
    start = time.perf_counter()
    phrases = sum(len(h.phrases) for h in parser.parse(captions))
    return phrases / (time.perf_counter() - start)


def ray_text(rows: list[dict], cfg: TextConfig) -> float:
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // TEXT_BATCH))
    ds = ds.map_batches(TextStage, fn_constructor_args=(cfg,), batch_format="numpy",
                        batch_size=TEXT_BATCH, concurrency=1, num_cpus=1)
    start = time.perf_counter()  # includes the actor start and spaCy load: the stage's real cost
    phrases = sum(len(json.loads(r["text"])["phrases"]) for r in ds.iter_rows())
    return phrases / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--cpus", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_corpus(tmp, SyntheticConfig(num_records=args.records, image_size=384))
        records = [json.loads(line) for line in open(f"{tmp}/records.jsonl")]
        paths = [f"{tmp}/{r['image']}" for r in records]
        captions = [r["caption"] for r in records]
        base = {"error": "", "detail": "", "boxes": "null"}
        image_rows = [{**base, "image": p} for p in paths]
        text_rows = [{**base, "caption": c, "annotations": "[]"} for c in captions]
        image_cfg, text_cfg = ImageConfig(max_side=224), TextConfig()

        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        results = {
            "images/s": (ray_images(image_rows, image_cfg), bare_images(paths, image_cfg)),
            "phrases/s": (ray_text(text_rows, text_cfg), bare_text(captions, text_cfg)),
        }
        ray.shutdown()
    print(f"{args.records} records, Ray with {args.cpus} CPU(s) vs a bare loop on one core")
    for name, (staged, bare) in results.items():
        print(f"{name:<10} ray stage {staged:9.1f}   bare loop {bare:9.1f}   ratio {staged / bare:5.2f}x")


if __name__ == "__main__":
    main()
