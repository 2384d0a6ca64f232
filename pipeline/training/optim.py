"""AdamW parameter groups and the warmup + cosine schedule."""

from __future__ import annotations

import math

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


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based): linear warmup, cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.warmup_steps, total_steps))
