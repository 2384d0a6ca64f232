"""Two gloo ranks, each with half the batch, against one process with all of it.

What a data-parallel engine does is reproduced by hand: each rank computes its loss share and
gradients, then both are averaged over the ranks. That must equal the single-process loss and
gradients on the concatenated batch (β-CAL with scope "rank": each rank's term equals the
single-process term on that rank's half).
"""

from __future__ import annotations

import dataclasses
import socket
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_models import tiny_batch, tiny_model

from pipeline.batch import Batch
from pipeline.objectives import ObjectiveConfig, compute_loss

WORLD = 2
GLOBAL = [ObjectiveConfig(name="beta+harmo", variant=v, beta_cal_scope="global") for v in ("ce", "bce")]
PER_RANK = ObjectiveConfig(name="beta", beta_cal_scope="rank")


def shard(batch: Batch, rank: int) -> Batch:
    return Batch(**{f.name: getattr(batch, f.name).chunk(WORLD)[rank] for f in dataclasses.fields(batch)})


def whole_batch() -> Batch:
    """``tiny_batch`` with one region grounding two phrases on each rank (images 0 and 2), and
    image 2's box equal to image 0's: the same box of another image, on another rank, is another
    region."""
    batch = tiny_batch(4, seed=1)
    boxes = batch.boxes.clone()
    boxes[0, 2] = boxes[2, 0] = boxes[2, 1] = boxes[0, 0]
    assert batch.region_mask[[0, 0, 2, 2], [0, 2, 0, 1]].all()
    return dataclasses.replace(batch, boxes=boxes)


def step(batch: Batch, cfg: ObjectiveConfig) -> dict[str, torch.Tensor]:
    """Loss, terms and gradients of one forward/backward of the tiny model (same init everywhere)."""
    model = tiny_model(cfg.uses_beta_cal, cfg.uses_regions)
    loss, terms = compute_loss(model(batch), batch, cfg)
    loss.backward()
    grads = {f"grad/{n}": p.grad for n, p in model.named_parameters()}
    return {"loss": loss.detach(), **{f"term/{n}": v for n, v in terms.items()}, **grads}


def worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    torch.set_num_threads(1)
    batch = shard(whole_batch(), rank)
    results = {}
    for i, cfg in enumerate(GLOBAL):
        for name, value in step(batch, cfg).items():
            dist.all_reduce(value)
            results[f"{i}/{name}"] = value / WORLD
    results["rank/beta_cal"] = step(batch, PER_RANK)["term/beta_cal"]
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_match_one_process_on_the_whole_batch(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    batch = whole_batch()
    counts = [int(shard(batch, r).region_mask.sum()) for r in range(WORLD)]
    assert counts[0] != counts[1]  # unequal valid rows per rank: the global normalisation matters

    for i, cfg in enumerate(GLOBAL):
        for name, expected in step(batch, cfg).items():
            torch.testing.assert_close(ranks[0][f"{i}/{name}"], expected, rtol=1e-4, atol=5e-5, msg=name)
    for rank in range(WORLD):
        expected = step(shard(batch, rank), PER_RANK)["term/beta_cal"]
        torch.testing.assert_close(ranks[rank]["rank/beta_cal"], expected, rtol=1e-5, atol=1e-6)
