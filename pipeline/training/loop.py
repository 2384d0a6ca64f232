"""The training run, top to bottom: setup, resume, the step loop, checkpoints, export."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from tqdm import tqdm

from pipeline.config import to_dict
from pipeline.lineage import make_lineage, write_lineage
from pipeline.models import FineGrainedCLIP
from pipeline.models.transform import normalizer
from pipeline.objectives import compute_loss
from pipeline.training import checkpoint
from pipeline.training.config import TrainConfig
from pipeline.training.data import Loader, build_loader
from pipeline.training.distributed import any_rank, check_replicas, init_distributed, mean_over_ranks
from pipeline.training.engine import build_engine, precision_of
from pipeline.training.export import export
from pipeline.training.metrics import FlopCount, MetricsLog, text_tokens
from pipeline.training.preemption import PreemptionFlag, requeue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    step: int  # the last completed optimizer step
    finished: bool  # reached cfg.steps (else: stopped early, checkpointed)
    checkpoint: Path | None
    export: Path | None
    main: bool  # rank 0, which reports for the run


def train(cfg: TrainConfig) -> RunResult:
    world = init_distributed(cfg.device)
    run_dir = Path(cfg.output)
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=1))
        write_lineage(run_dir, make_lineage(cfg.data.manifests, to_dict(cfg)))  # copied into each checkpoint
    preemption = PreemptionFlag()

    torch.manual_seed(cfg.seed)  # every rank builds the same initial model
    model = FineGrainedCLIP(
        cfg.model, with_pooler=cfg.objective.uses_beta_cal, with_region_head=cfg.objective.uses_regions
    )
    saved = checkpoint.latest_progress(run_dir) if cfg.checkpoint.resume else None
    resized = saved is not None and saved.world_size != world.size
    engine = build_engine(cfg, model, world, load_universal=resized)
    dtype = torch.bfloat16 if precision_of(cfg, world) == "bf16" else torch.float32
    global_batch = cfg.data.batch_size * cfg.grad_accum * world.size
    step, samples = 0, 0
    if saved is not None:
        checkpoint.resume(engine, run_dir, saved, world)
        step, samples = saved.step, saved.samples
        if world.is_main:
            _warn_on_resize(saved, world.size, global_batch)
    if cfg.replica_check_every:
        check_replicas(engine.module, step)

    # the loader continues at the samples trained on: the same batches follow on the same ranks
    loader = build_run_loader(
        cfg, model, world.rank, world.size, start_batch=samples // (cfg.data.batch_size * world.size)
    )
    if world.is_main:
        log.info(
            "%d samples in %d manifest(s); %d batches per rank per epoch; steps %d → %d",
            loader.num_samples,
            len(cfg.data.manifests),
            loader.batches_per_epoch,
            step,
            cfg.steps,
        )

    metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=world.is_main, start_step=step)
    flops = FlopCount(enabled=world.device.type == "cuda")
    last_saved: Path | None = None
    batches = iter(loader)
    stop_at = cfg.stop_after or cfg.steps
    bar = tqdm(
        total=cfg.steps,
        initial=step,
        disable=not world.is_main,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=5,
    )
    while step < stop_at:
        terms_sum: dict[str, float] = {}
        for _ in range(cfg.grad_accum):
            batch = next(batches).to(world.device)
            batch.images = batch.images.to(dtype)
            with flops:
                loss, terms = compute_loss(engine(batch), batch, cfg.objective)
                engine.backward(loss)
            engine.step()
            metrics.count(batch.images.shape[0], text_tokens(batch))
            for name, value in {"loss": loss.detach(), **terms}.items():
                terms_sum[name] = terms_sum.get(name, 0.0) + float(value) / cfg.grad_accum
        step += 1
        samples += global_batch
        bar.update(1)
        if cfg.replica_check_every and step % cfg.replica_check_every == 0:
            check_replicas(engine.module, step)
        if step % cfg.log_every == 0 or step == stop_at:
            lrs = {g["name"]: g["lr"] for g in engine.optimizer.param_groups}
            losses = mean_over_ranks({**terms_sum, "skipped": sum(loader.skipped.values())}, world.device)
            skipped = round(losses.pop("skipped") * world.size)
            record = metrics.write(
                step,
                losses,
                lrs,
                world.size,
                _flops_per_sample(flops, cfg),
                cfg.peak_tflops,
                world.device.type == "cuda",
                skipped_samples=skipped,
            )
            bar.set_postfix(loss=f"{record['loss']:.4f}", sps=record["samples_per_s"])
        preempted = any_rank(preemption.requested, world.device)
        if step % cfg.checkpoint.every == 0 or step == stop_at or preempted:
            progress = checkpoint.Progress(step, samples, world.size, global_batch)
            last_saved = checkpoint.save(engine, run_dir, progress, world, cfg.checkpoint.keep_last)
        if preempted:
            if world.is_main:
                requeue()
            break
    bar.close()
    metrics.close()

    finished = step >= cfg.steps
    exported = None
    if finished and world.is_main:
        exported = export(
            run_dir / "checkpoints", checkpoint.tag_of(step), cfg.model, cfg.zero_stage, run_dir / "export"
        )
    return RunResult(step, finished, last_saved, exported, world.is_main)


def build_run_loader(
    cfg: TrainConfig, model: FineGrainedCLIP, rank: int, world_size: int, start_batch: int
) -> Loader:
    """The loader with the model's tokenizer, input size and normalisation."""
    visual = model.clip.visual
    return build_loader(
        cfg.data,
        tokenizer=open_clip.get_tokenizer(cfg.model.name, context_length=cfg.model.context_length),
        transform=normalizer(visual),
        image_size=visual.image_size[0],
        rank=rank,
        world_size=world_size,
        start_batch=start_batch,
    )


def _warn_on_resize(saved: checkpoint.Progress, world_size: int, global_batch: int) -> None:
    """What a resumed run on another number of ranks, or with another global batch, changes."""
    if saved.world_size != world_size:
        log.warning(
            "resumed on %d ranks from a checkpoint saved on %d: the rest of the current epoch is "
            "split over the new ranks, so within it some samples may come twice and others not at "
            "all; from the next epoch on, every sample once per epoch again",
            world_size,
            saved.world_size,
        )
    if saved.global_batch != global_batch:
        log.warning(
            "global batch is %d samples per step, the checkpoint's was %d (batch_size × grad_accum × "
            "ranks): the learning rate schedule counts steps, so set grad_accum to keep it",
            global_batch,
            saved.global_batch,
        )


def _flops_per_sample(flops: FlopCount, cfg: TrainConfig) -> float | None:
    return flops.per_micro_step / cfg.data.batch_size if flops.per_micro_step else None
