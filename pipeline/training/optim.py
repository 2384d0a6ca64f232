"""AdamW parameter groups and the warmup + cosine schedule."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import nn

from pipeline.training.config import OptimConfig

GROUPS = ("backbone", "pooler", "heads")  # param_groups' kinds, in the optimizer's order


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Up to six groups: {backbone, pooler, heads} × {decayed, not decayed}; empty ones left out.

    The backbone is ``model.clip``; ``pooler`` is β-CLIP's text-conditioned pooler, which has a
    schedule of its own (``optim.pooler_*``); ``heads`` every other module outside the backbone
    (HarmoCLIP's region head, its temperature). No weight decay on gains, biases and temperatures
    (open_clip's rule), nor on positional embeddings, whose Long-CLIP first 20 rows must stay where
    pretraining left them.
    """
    groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        kind = 0 if name.startswith("clip.") else 1 if name.startswith("pooler.") else 2
        decay = p.ndim >= 2 and "logit_scale" not in name and "positional_embedding" not in name
        groups.setdefault((kind, decay), []).append(p)
    return [
        {
            "params": params,
            "lr": cfg.lr if kind == 0 else cfg.head_lr,
            "weight_decay": cfg.weight_decay if decay else 0.0,
            "name": f"{GROUPS[kind]}{'' if decay else '_no_decay'}",
        }
        for (kind, decay), params in sorted(groups.items())
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        param_groups(model, cfg), betas=cfg.betas, eps=cfg.eps, fused=device.type == "cuda"
    )


def lr_at(step: int, total: int, peak: float, end: float, warmup: int, start: float) -> float:
    """The lr at optimizer step ``step`` (0-based) of ``total``: β-CLIP's (and DeiT's)
    ``utils.cosine_scheduler``, i.e. ``np.linspace(start, peak, warmup)``, then
    ``end + ½(peak − end)(1 + cos(π i / (total − warmup)))`` for the i-th step after it, and
    ``end`` past the last step."""
    if step < warmup:
        return start + (peak - start) * step / max(warmup - 1, 1)
    decay = max(total - warmup, 1)
    return end + 0.5 * (peak - end) * (1 + math.cos(math.pi * min(step - warmup, decay) / decay))


def group_schedule(cfg: OptimConfig, kind: str, total_steps: int) -> Callable[[int], float]:
    """A parameter group's lr as a function of the step: the backbone, the pooler and the other
    heads each have their own peak, end and warmup (β-CLIP: a warmed-up backbone, a pooler that
    starts at its peak)."""
    head_warmup = cfg.warmup_steps if cfg.head_warmup_steps is None else cfg.head_warmup_steps
    if kind == "backbone":
        peak, end, warmup = cfg.lr, cfg.lr_end, cfg.warmup_steps
    elif kind == "pooler":
        peak = cfg.head_lr
        end = cfg.head_lr_end if cfg.pooler_lr_end is None else cfg.pooler_lr_end
        warmup = head_warmup if cfg.pooler_warmup_steps is None else cfg.pooler_warmup_steps
    else:
        peak, end, warmup = cfg.head_lr, cfg.head_lr_end, head_warmup
    start = cfg.warmup_start_lr if cfg.warmup_start_lr is not None else peak / max(warmup, 1)
    return functools.partial(lr_at, total=total_steps, peak=peak, end=end, warmup=warmup, start=start)


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    schedules = [
        group_schedule(cfg, g["name"].removesuffix("_no_decay"), total_steps) for g in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        [lambda s, lr=lr, base=g["lr"]: lr(s) / base for lr, g in zip(schedules, optimizer.param_groups)],
    )
