"""Two gloo ranks, each with half the batch, against one process with all of it.

What a data-parallel engine does is reproduced by hand: each rank computes its loss share and
gradients, then both are averaged over the ranks. That must equal the single-process loss and
gradients on the concatenated batch (β-CAL with scope "rank": each rank's term equals the
single-process term on that rank's half). GC with ``gc_gather_grad`` false instead gives
β-CLIP's official gradient, written out from its code.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import free_port, init_gloo, tiny_batch, tiny_model

from pipeline.batch import Batch
from pipeline.objectives import ObjectiveConfig, clip_loss, compute_loss

pytestmark = pytest.mark.integration  # two ranks by mp.spawn
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
    init_gloo(rank, WORLD, port)
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


# --- GC without gradient through the gather: β-CLIP's official gradient -----------------------------

OFFICIAL = ObjectiveConfig(name="clip", gc_gather_grad=False)
IMAGES = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # pair r on rank r
TEXTS = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)


def leaves() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two pairs and the scale 2, replicated like an engine's parameters."""
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    return IMAGES.clone().requires_grad_(), TEXTS.clone().requires_grad_(), scale


def official_gc_step(batch: Batch) -> dict[str, torch.Tensor]:
    """β-CLIP's ``get_global_loss`` (``losses.py``) under DDP on WORLD ranks, in one process: each
    rank's rows against every rank's features from ``all_gather_batch``, which carry no gradient
    (its own included); DDP averages the ranks' gradients, i.e. differentiates the mean loss."""
    model = tiny_model(with_pooler=False, with_region_head=False)
    out = model(batch)
    image, text, scale = out.image.float(), out.text.float(), out.logit_scale.float()
    image_all, text_all = image.detach(), text.detach()
    losses = []
    for rows in torch.arange(len(image)).chunk(WORLD):
        to_text = F.cross_entropy(scale * image[rows] @ text_all.T, rows)
        to_image = F.cross_entropy(scale * text[rows] @ image_all.T, rows)
        losses.append(0.5 * (to_text + to_image))
    loss = torch.stack(losses).mean()
    loss.backward()
    return {"loss": loss.detach(), **{f"grad/{n}": p.grad for n, p in model.named_parameters()}}


def official_gc_worker(rank: int, port: int, out_dir: str) -> None:
    init_gloo(rank, WORLD, port)
    torch.set_num_threads(1)
    results = {}
    for gather_grad in (False, True):
        images, texts, scale = leaves()
        clip_loss(images[rank : rank + 1], texts[rank : rank + 1], scale, gather_grad).backward()
        for name, x in (("images", images), ("texts", texts), ("scale", scale)):
            dist.all_reduce(x.grad)
            results[f"{gather_grad}/{name}"] = x.grad / WORLD
    for name, value in step(shard(whole_batch(), rank), OFFICIAL).items():
        dist.all_reduce(value)
        results[f"model/{name}"] = value / WORLD
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_gc_without_gather_grad_gives_the_official_gradient(tmp_path):
    mp.spawn(official_gc_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD)
    ranks = torch.load(tmp_path / "rank0.pt")

    # Rank r's loss ½[CE(s·a_r·b_all, r) + CE(s·b_r·a_all, r)], a_all and b_all constants: a_r gets
    # (s/2)·p_r,other·(b_other − b_r), b_r gets (s/2)·q_r,other·(a_other − a_r), and the engine halves
    # both. s = 2: image→text rows (2, 1.2), (0, 1.6); text→image rows (2, 0), (1.2, 1.6).
    p01, p10 = 1 / (1 + math.exp(0.8)), 1 / (1 + math.exp(1.6))
    q01, q10 = 1 / (1 + math.exp(2)), 1 / (1 + math.exp(0.4))
    images = torch.tensor([[-0.4 * p01, 0.8 * p01], [0.4 * p10, -0.8 * p10]], dtype=torch.float64) / 2
    texts = torch.tensor([[-q01, q01], [q10, -q10]], dtype=torch.float64) / 2
    torch.testing.assert_close(ranks["False/images"], images)
    torch.testing.assert_close(ranks["False/texts"], texts)

    # With gradient through the gather: the single-process gradient, columns included, which differs.
    whole = leaves()
    clip_loss(*whole).backward()
    for name, x in zip(("images", "texts", "scale"), whole, strict=True):
        torch.testing.assert_close(ranks[f"True/{name}"], x.grad)
    assert not torch.allclose(ranks["False/images"], whole[0].grad)
    torch.testing.assert_close(ranks["False/scale"], whole[2].grad)  # no column: the same either way

    # compute_loss with gc_gather_grad false on the model: the official code's loss and gradient.
    for name, expected in official_gc_step(whole_batch()).items():
        torch.testing.assert_close(ranks[f"model/{name}"], expected, rtol=1e-4, atol=5e-5, msg=name)
