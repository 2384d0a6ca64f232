"""Forward+backward time of each objective, against plain CLIP and against its bare towers.

    python benchmarks/bench_objectives.py [--data DATASET]     # tiny model, CPU, the demo's data
    python benchmarks/bench_objectives.py --model ViT-B-16-quickgelu --batch-size 64 --device cuda --bf16
    python benchmarks/bench_objectives.py --model ViT-B-16 --batch-size 64 --flops-only   # any machine

Batches are the demo's data (generated corpus → data prep → training loader) as
configs/train/beta_tiny.yaml reads it: K = 36 text slots (caption, 5 sentences, 30 phrases),
R = 16 regions, a 248-token context. Each objective builds the model with just the heads it
trains; a step is model forward, loss and backward (no optimiser step). Per objective:

- ``x clip``: its step time over the ``clip`` step's;
- ``overhead``: its step time over the bare towers' forward + backward on exactly the images and
  texts it encodes, in the same shapes (the ViT on the images; the text transformer on each
  length bucket of the slots it encodes, and on harmo's region pseudo-token sequences), without
  pooler, heads or losses: what is ours to remove. Target <= 1.15x;
- ``FLOPs``: the same ratio in FLOPs (torch's FlopCounterMode: matmuls, convolutions,
  attention), counted on the meta device, where tensors have shapes and nothing is computed:
  ``--flops-only`` gives it for a model too large to time here;
- ``padding``: real tokens / text positions encoded, after length bucketing, over all the
  batches read. Target >= 0.75.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from demo_batches import REPO, loader_rate, prepare
from torch.utils.flop_counter import FlopCounterMode

from pipeline.batch import Batch
from pipeline.config import load_config
from pipeline.models import TINY_MODEL, FineGrainedCLIP
from pipeline.models.fine_clip import Plan
from pipeline.models.heads import TextTokenRegionHead
from pipeline.models.text import TextPack, encode_packed
from pipeline.objectives import ObjectiveConfig, compute_loss
from pipeline.objectives.config import NAMES
from pipeline.training.config import TrainConfig


def train_config(dataset: str, model: str, batch_size: int) -> TrainConfig:
    overrides = [f"data.manifests=[{dataset}]", f"data.batch_size={batch_size}", f"model.name={model}"]
    return load_config(
        TrainConfig, REPO / "configs/train/beta_tiny.yaml", [*overrides, "data.workers=0", "output=unused"]
    )


def objective_loss(
    model: FineGrainedCLIP, batch: Batch, plan: Plan, cfg: ObjectiveConfig, autocast
) -> Callable:
    """The model's forward on its plan (made on the host, as training does), loss."""

    def loss() -> torch.Tensor:
        with autocast():
            out = model(batch, plan)
        return compute_loss(out, batch, cfg)[0]

    return loss


def towers_loss(model: FineGrainedCLIP, batch: Batch, plan: Plan, autocast) -> Callable:
    """The bare towers on the shapes ``model`` encodes: the ViT; the text tower (one token lookup,
    the transformer per length bucket) on the model's packed texts and, as one more bucket, on the
    regions' pseudo-token sequences. The loss is the outputs' sum (free)."""
    clip, texts = model.clip, plan.texts
    regions = len(plan.regions) if isinstance(model.region_head, TextTokenRegionHead) else 0
    slots = batch.token_mask.numel()
    if regions:  # start, pseudo tokens, end
        width = model.region_head.num_tokens + 2
        texts = TextPack(
            torch.cat([texts.tokens, texts.tokens.new_ones(regions * width)]),
            torch.cat([texts.eot, texts.eot.new_full((regions,), width - 1)]),
            torch.cat([texts.rows, slots + torch.arange(regions, device=texts.rows.device)]),
            (*texts.buckets, (regions, width)),
        )

    def loss() -> torch.Tensor:
        with autocast():
            outs = [clip.visual(batch.images), encode_packed(clip, texts, slots + regions)]
        return sum(o.float().sum() for o in outs)

    return loss


def flop_overhead(model: FineGrainedCLIP, batch: Batch, plan: Plan, cfg: ObjectiveConfig) -> float:
    """FLOPs of the step over the bare towers', counted on the meta device (shapes, no values:
    nothing is computed, so any model size can be counted). Moves ``model`` to the meta device."""
    model, batch, plan = model.to("meta"), batch.to("meta"), plan.to("meta")
    no_autocast = functools.partial(torch.autocast, "cpu", enabled=False)
    counts = []
    for loss in (
        objective_loss(model, batch, plan, cfg, no_autocast),
        towers_loss(model, batch, plan, no_autocast),
    ):
        with FlopCounterMode(display=False) as counter:
            loss().backward()
        counts.append(counter.get_total_flops())
    return counts[0] / counts[1]


def best_times(
    model: FineGrainedCLIP, losses: list[Callable[[], torch.Tensor]], device: str, warmup: int, repeats: int
) -> list[float]:
    """Fastest seconds of each ``loss()`` + backward. The losses take turns, so that both sides of
    a ratio see the same load; the fastest run is the one the machine disturbed least. On the
    CPU the clock is this process's CPU time: on a shared machine, wall time counts the
    neighbours' work too (with one thread, CPU time is the step's time on an idle core)."""
    clock = time.perf_counter if device == "cuda" else time.process_time
    times = [[] for _ in losses]
    for i in range(warmup + repeats):
        for loss, kept in zip(losses, times):
            model.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()
            start = clock()
            loss().backward()
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                kept.append(clock() - start)
    return [min(kept) for kept in times]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", help="an existing dataset folder (default: generate and prep one)")
    parser.add_argument("--records", type=int, default=160, help="samples to generate without --data")
    parser.add_argument("--batches", type=int, default=8, help="batches read; the first is timed")
    parser.add_argument("--model", default=TINY_MODEL)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPUs; slow on AVX2 CPUs)")
    parser.add_argument("--threads", type=int, default=1, help="CPU: intra-op threads (see best_times)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--flops-only", action="store_true", help="count FLOPs and padding, time nothing")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        dataset = args.data or prepare(args.records, tmp, shards=1)
        train_cfg = train_config(dataset, args.model, args.batch_size)
        _, batches = loader_rate(train_cfg, rounds=args.batches - 1)
    batch = batches[0]
    autocast = functools.partial(torch.autocast, args.device, dtype=torch.bfloat16, enabled=args.bf16)
    timing = "FLOPs only" if args.flops_only else f"best of {args.repeats} after {args.warmup} warm-up"
    print(
        f"{args.model}, batch {args.batch_size}, {batch.images.shape[-1]} px, {args.device}"
        f"{' bf16' if args.bf16 else ''}, {args.threads} thread(s); the demo's data: "
        f"{int(batch.token_mask.sum())} text slots, {int(batch.region_mask.sum())} regions in the timed "
        f"batch; {timing}"
    )
    print(
        f"{'':>11}  {'step':>9}  {'x clip':>6}  {'towers':>9}  {'overhead':>8}  {'FLOPs':>6}  "
        f"{'positions':>9}  padding"
    )
    baseline = None
    for name in NAMES:
        cfg = ObjectiveConfig(name=name)
        torch.manual_seed(0)
        model = FineGrainedCLIP(train_cfg.model, cfg.uses_beta_cal, cfg.uses_regions)
        plan = model.plan(batch)
        times = "-"
        if not args.flops_only:
            on_device, device_plan = batch.to(args.device), plan.to(args.device)
            step, towers = best_times(
                model.to(args.device),
                [
                    objective_loss(model, on_device, device_plan, cfg, autocast),
                    towers_loss(model, on_device, device_plan, autocast),
                ],
                args.device,
                args.warmup,
                args.repeats,
            )
            baseline = baseline or step
            times = f"{step * 1e3:6.1f} ms  {step / baseline:5.2f}x  {towers * 1e3:6.1f} ms  "
            times += f"{step / towers:7.2f}x"
        flop_ratio = flop_overhead(model, batch, plan, cfg)
        packs = [plan.texts] + [model.plan(b).texts for b in batches[1:]]
        real, encoded = sum(p.real_tokens for p in packs), sum(p.positions for p in packs)
        counts = f"{encoded / len(batches):9.0f}  {real / encoded:7.3f}"
        print(f"{name:>11}: {times:>43}  {flop_ratio:5.3f}x  {counts}")
    print("overhead target <= 1.15x; padding (real tokens / positions encoded) target >= 0.75")


if __name__ == "__main__":
    main()
