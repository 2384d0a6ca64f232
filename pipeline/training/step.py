"""One training micro-step, as the run loop takes it and the benchmarks time it."""

from __future__ import annotations

from typing import Any

import torch

from pipeline.batch import Batch
from pipeline.models.fine_clip import FineGrainedCLIP, Plan
from pipeline.objectives import ObjectiveConfig, compute_loss


def to_device(
    batch: Batch, model: FineGrainedCLIP, device: torch.device, dtype: torch.dtype
) -> tuple[Batch, Plan]:
    """The batch on the device (images in the compute dtype) and the model's plan for it, made
    from the host copy: nothing in the step then reads a value back from the device."""
    plan = model.plan(batch).to(device)
    batch = batch.to(device)
    batch.images = batch.images.to(dtype)
    return batch, plan


def forward_backward(
    engine: Any, batch: Batch, plan: Plan, objective: ObjectiveConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward, loss and backward through the DeepSpeed ``engine``: (loss, its terms), on the device."""
    loss, terms = compute_loss(engine(batch, plan), batch, objective)
    engine.backward(loss)
    return loss, terms
