"""The training run, top to bottom: setup, resume, the step loop, checkpoints, export."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.config import to_dict
from pipeline.device import device_peak_tflops
from pipeline.lineage import make_lineage, write_lineage
from pipeline.models import FineGrainedCLIP
from pipeline.objectives.combined import loss_bounds
from pipeline.training.checkpoint import CheckpointManager, Progress, tag_of
from pipeline.training.config import TrainConfig
from pipeline.training.data import Loader, build_run_loader
from pipeline.training.distributed import ReplicaCheck, World, init_distributed, shutdown
from pipeline.training.engine import build_engine, precision_of
from pipeline.training.export import export
from pipeline.training.metrics import StepMetrics
from pipeline.training.preemption import Preemption, requeue
from pipeline.training.step import forward_backward, to_device

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
    try:
        return _train(cfg, world)
    finally:
        shutdown()


def _train(cfg: TrainConfig, world: World) -> RunResult:
    run_dir = Path(cfg.output)
    if world.is_main:
        _start_run_dir(run_dir, cfg)
    checkpoints = CheckpointManager(run_dir, cfg.checkpoint, world)
    preemption = Preemption(world.device, cfg.checkpoint.preemption_check_every)

    model, engine, step, samples = _model_at_start(cfg, world, checkpoints)
    global_batch = cfg.global_batch(world.size)
    replicas = ReplicaCheck(cfg.replica_check_every)
    replicas.check(engine.module, step, start=True)
    loader, metrics = _loader_and_metrics(cfg, world, step, samples)
    stop_at = cfg.stop_after or cfg.steps
    dtype = torch.bfloat16 if precision_of(cfg, world) == "bf16" else torch.float32
    batches = iter(loader)
    try:
        while step < stop_at:
            for _ in range(cfg.grad_accum):
                host = next(batches)
                batch, plan = to_device(host, model, world.device, dtype)
                with metrics.flops:
                    loss, terms = forward_backward(engine, batch, plan, cfg.objective)
                engine.step()
                metrics.count(batch, {"loss": loss, **terms, **loss_bounds(host, cfg.objective)})
            step += 1
            samples += global_batch
            last = step == stop_at
            metrics.end_step(step, samples, engine.optimizer, sum(loader.skipped.values()), last=last)
            replicas.check(engine.module, step)
            preempted = preemption.agreed(step)
            if checkpoints.due(step, force=last or preempted):
                metrics.check_finite(step)  # never a checkpoint, nor so an export, of diverged weights
            checkpoints.maybe_save(
                engine, Progress(step, samples, world.size, global_batch), force=last or preempted
            )
            if preempted:
                if world.is_main:
                    requeue()
                break
    finally:
        metrics.close()

    finished = step >= cfg.steps
    exported = None
    if finished and world.is_main:
        exported = export(
            run_dir / "checkpoints", tag_of(step), cfg.model, cfg.zero_stage, run_dir / "export"
        )
    return RunResult(step, finished, checkpoints.last_saved, exported, world.is_main)


def _loader_and_metrics(
    cfg: TrainConfig, world: World, step: int, samples: int
) -> tuple[Loader, StepMetrics]:
    """The loader, continuing at the samples trained on (the same batches follow on the same
    ranks), and the step metrics, continuing at ``step``."""
    loader = build_run_loader(
        cfg.data,
        cfg.model,
        world.rank,
        world.size,
        start_batch=samples // (cfg.data.batch_size * world.size),
        pin_memory=world.device.type == "cuda",  # page-locked: copies to the GPU run asynchronously
    )
    if world.is_main:
        epoch = f"{loader.num_samples} samples, {loader.batches_per_epoch} batches per rank per epoch"
        log.info("%s; steps %d → %d", epoch, step, cfg.steps)
    metrics = StepMetrics(
        Path(cfg.output),
        world,
        cfg.log_every,
        cfg.peak_tflops or device_peak_tflops(world.device),
        steps=(step, cfg.steps),
        epoch_samples=loader.num_samples,
        tensorboard=cfg.tensorboard,
    )
    return loader, metrics


def _model_at_start(
    cfg: TrainConfig, world: World, checkpoints: CheckpointManager
) -> tuple[FineGrainedCLIP, Any, int, int]:
    """(model, engine, step, samples trained on): a new model, or the latest checkpoint's state."""
    torch.manual_seed(cfg.seed)  # every rank builds the same initial model
    model = FineGrainedCLIP(
        cfg.model, with_pooler=cfg.objective.uses_beta_cal, with_region_head=cfg.objective.uses_regions
    )
    log.info(
        "model %s (pretrained=%s), text context %d%s%s",
        cfg.model.name,
        cfg.model.pretrained,
        model.clip.context_length,
        ", β-CLIP pooler" if model.pooler is not None else "",
        ", region head" if model.region_head is not None else "",
    )
    saved = checkpoints.latest()
    resized = saved is not None and saved.world_size != world.size
    engine = build_engine(cfg, model, world, load_universal=resized)
    if saved is None:
        return model, engine, 0, 0
    checkpoints.resume(engine, saved)
    if world.is_main:
        _warn_on_resize(saved, world.size, cfg.global_batch(world.size))
    return model, engine, saved.step, saved.samples


def _start_run_dir(run_dir: Path, cfg: TrainConfig) -> None:
    """The run's config and lineage, which every checkpoint copies (rank 0)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=1))
    write_lineage(run_dir, make_lineage(cfg.data.manifests, to_dict(cfg)))


def _warn_on_resize(saved: Progress, world_size: int, global_batch: int) -> None:
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
