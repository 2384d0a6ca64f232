"""AdamW parameter groups and the warmup + cosine schedule."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import nn

from pipeline.training.config import OptimConfig


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Four groups: {backbone, heads} × {decayed, not decayed}; empty groups are left out.

    Heads are the modules outside ``model.clip`` (β-CLIP's pooler, HarmoCLIP's region head). No
    weight decay on gains, biases and temperatures (open_clip's rule), nor on positional
    embeddings, whose Long-CLIP first 20 rows must stay where pretraining left them.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        head = not name.startswith("clip.")
        decay = p.ndim >= 2 and "logit_scale" not in name and "positional_embedding" not in name
        groups.setdefault((head, decay), []).append(p)
    return [
        {
            "params": params,
            "lr": cfg.head_lr if head else cfg.lr,
            "weight_decay": cfg.weight_decay if decay else 0.0,
            "name": f"{'heads' if head else 'backbone'}{'' if decay else '_no_decay'}",
        }
        for (head, decay), params in sorted(groups.items())
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


def group_schedule(cfg: OptimConfig, head: bool, total_steps: int) -> Callable[[int], float]:
    """A parameter group's lr as a function of the step: the backbone's and the heads' each have
    their own peak, end and warmup (β-CLIP: a warmed-up backbone, a pooler that starts at its peak)."""
    peak, end = (cfg.head_lr, cfg.head_lr_end) if head else (cfg.lr, cfg.lr_end)
    warmup = cfg.head_warmup_steps if head and cfg.head_warmup_steps is not None else cfg.warmup_steps
    start = cfg.warmup_start_lr if cfg.warmup_start_lr is not None else peak / max(warmup, 1)
    return functools.partial(lr_at, total=total_steps, peak=peak, end=end, warmup=warmup, start=start)


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    schedules = [
        group_schedule(cfg, g["name"].startswith("heads"), total_steps) for g in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        [lambda s, lr=lr, base=g["lr"]: lr(s) / base for lr, g in zip(schedules, optimizer.param_groups)],
    )
