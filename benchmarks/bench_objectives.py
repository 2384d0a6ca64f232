"""Forward+backward time of each objective relative to plain CLIP, same model and batch.

    python benchmarks/bench_objectives.py                      # tiny model, CPU, 2 threads
    python benchmarks/bench_objectives.py --model ViT-B-16-quickgelu --batch-size 64 --device cuda --bf16

The batch looks like β-CLIP's: K = 36 text slots (caption + 5 sentences + up to 30 phrases, here
12 filled) and 8 grounded regions per image. Each objective builds the model with just the heads
it trains; the time covers model forward, loss and backward (no optimiser step).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import open_clip
import torch

from pipeline.batch import Batch
from pipeline.models import TINY_MODEL, FineGrainedCLIP, ModelConfig
from pipeline.objectives import ObjectiveConfig, compute_loss

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["ball", "cube", "cone", "ring", "star", "box", "cup", "disc"]
RELATIONS = ["left of", "above", "inside", "next to", "below"]


def make_batch(
    batch_size: int, image_size: int, sentences: int = 5, phrases: int = 12, regions: int = 8, seed: int = 0
) -> Batch:
    rng = random.Random(seed)
    texts, boxes = [], []
    for _ in range(batch_size):
        objects = [f"a {rng.choice(COLOURS)} {rng.choice(SHAPES)}" for _ in range(phrases)]
        lines = [
            f"{rng.choice(objects)} is {rng.choice(RELATIONS)} {rng.choice(objects)} in this picture."
            for _ in range(sentences)
        ]
        texts.append([" ".join(lines)] + lines + objects)
        image_boxes = []
        for slot in range(1 + sentences, 1 + sentences + regions):
            x0, y0 = rng.uniform(0, image_size / 2), rng.uniform(0, image_size / 2)
            size = rng.uniform(image_size / 8, image_size / 2)
            image_boxes.append(((x0, y0, x0 + size, y0 + size), slot))
        boxes.append(image_boxes)
    images = torch.randn(batch_size, 3, image_size, image_size)
    return Batch.from_lists(
        images, texts, boxes, open_clip.get_tokenizer("ViT-B-16"), num_slots=36, num_regions=10
    )


def time_step(
    model: FineGrainedCLIP,
    batch: Batch,
    cfg: ObjectiveConfig,
    device: str,
    bf16: bool,
    warmup: int,
    repeats: int,
) -> float:
    """Median seconds of forward + loss + backward."""
    times = []
    for i in range(warmup + repeats):
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            out = model(batch)
        loss, _ = compute_loss(out, batch, cfg)
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=TINY_MODEL)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPUs; slow on AVX2 CPUs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model_cfg = ModelConfig(name=args.model, pretrained=None)
    image_size = open_clip.get_model_config(args.model)["vision_cfg"]["image_size"]
    batch = make_batch(args.batch_size, image_size).to(args.device)
    print(
        f"{args.model}, batch {args.batch_size}, {image_size} px, "
        f"{args.device}{' bf16' if args.bf16 else ''}, "
        f"{int(batch.token_mask.sum())} text slots, {int(batch.region_mask.sum())} regions; "
        f"median of {args.repeats} after {args.warmup} warmup"
    )
    baseline = None
    for name in ("clip", "beta", "harmo", "beta+harmo"):
        cfg = ObjectiveConfig(name=name)
        torch.manual_seed(0)
        model = FineGrainedCLIP(model_cfg, cfg.uses_beta_cal, cfg.uses_regions).to(args.device)
        seconds = time_step(model, batch, cfg, args.device, args.bf16, args.warmup, args.repeats)
        baseline = baseline or seconds
        print(f"{name:>11}: {seconds * 1000:8.1f} ms  {seconds / baseline:5.2f}x clip")


if __name__ == "__main__":
    main()
