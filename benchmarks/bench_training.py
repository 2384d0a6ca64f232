"""Training throughput and memory at the tiny config, CPU, one run.

    python benchmarks/bench_training.py [--data DATASET] [--records 1000] [--batches 40]

1. Loader vs step: samples/s of the training loader (read → shuffle → decode → resize →
   tokenise → collate, 2 workers) against samples/s of the training step consuming batches
   (β-CLIP objective, ZeRO-2, one rank, batches already in memory). Target: loader ≥ 3× the
   step, so the model never waits for data. Both run in this process on the same cores,
   one after the other, on the same dataset (default: generated and prepped here, ~30 s).
2. ZeRO-3 vs ZeRO-0: per-rank bytes held by parameters at rest with 2 ranks (gloo), measured
   on the engines' real tensors (a torchrun child of this script).

The tiny config: FG-Tiny-16 at 128 px, K = 36 text slots (1 + 5 + 30), R = 16 regions,
248-token context, batch 32. Absolute numbers on shared machines mean little; the ratios are
what to read.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from demo_batches import loader_rate, prepare

from pipeline.config import load_config
from pipeline.models import FineGrainedCLIP
from pipeline.training.config import TrainConfig
from pipeline.training.distributed import init_distributed
from pipeline.training.engine import build_engine
from pipeline.training.step import forward_backward, to_device

REPO = Path(__file__).resolve().parents[1]
BATCH = 32


def config(dataset: str, *overrides: str) -> TrainConfig:
    return load_config(
        TrainConfig,
        REPO / "configs/train/beta_tiny.yaml",
        [
            f"data.manifests=[{dataset}]",
            f"data.batch_size={BATCH}",
            "output=unused",
            "device=cpu",
            *overrides,
        ],
    )


def step_rate(cfg: TrainConfig, batches: list) -> float:
    world = init_distributed("cpu")
    model = FineGrainedCLIP(cfg.model, cfg.objective.uses_beta_cal, cfg.objective.uses_regions)
    engine = build_engine(cfg, model, world)

    def step(batch) -> None:
        forward_backward(engine, *to_device(batch, model, world.device, torch.float32), cfg.objective)
        engine.step()

    step(batches[0])  # warm-up
    start = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    return (len(batches) - 1) * BATCH / (time.perf_counter() - start)


def parameter_bytes(dataset: str) -> None:
    """In each of 2 torchrun ranks: bytes of parameters held at rest under ZeRO-0 and ZeRO-3."""
    world = init_distributed("cpu")
    held = {}
    for stage in (0, 3):
        cfg = config(dataset, f"zero_stage={stage}")
        model = FineGrainedCLIP(cfg.model, cfg.objective.uses_beta_cal, cfg.objective.uses_regions)
        engine = build_engine(cfg, model, world)
        held[stage] = sum(
            p.data.numel() * p.data.element_size()
            + (p.ds_tensor.numel() * p.ds_tensor.element_size() if hasattr(p, "ds_tensor") else 0)
            for p in engine.module.parameters()
        )
    if world.is_main:
        print(json.dumps(held))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", help="an existing dataset folder (default: generate and prep one)")
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        parameter_bytes(args.data)
        return
    with tempfile.TemporaryDirectory() as tmp:
        dataset = args.data or prepare(args.records, tmp)
        cfg = config(dataset, "data.workers=2", "zero_stage=2")
        loader, batches = loader_rate(cfg, rounds=max(1, args.batches // cfg.data.workers))
        step = step_rate(cfg, batches)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                "2",
                "--master_port",
                str(port),
                __file__,
                "--memory-child",
                "--data",
                dataset,
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            check=True,
        )
        held = {int(k): v for k, v in json.loads(child.stdout.strip().splitlines()[-1]).items()}
    print(f"tiny config, batch {BATCH}, CPU; loader with 2 workers, step = ZeRO-2 β-CLIP on one rank")
    print(f"loader   {loader:8.1f} samples/s")
    print(f"step     {step:8.1f} samples/s")
    print(f"ratio    {loader / step:8.2f}x  (target >= 3x)")
    print(
        f"per-rank parameter bytes at 2 ranks: ZeRO-0 {held[0] / 2**20:.1f} MiB, "
        f"ZeRO-3 {held[3] / 2**20:.1f} MiB, ratio {held[3] / held[0]:.2f}x"
    )


if __name__ == "__main__":
    main()
