"""The DeepSpeed engine: ZeRO stage, precision, accumulation, clipping, optimizer and schedule."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.training.config import TrainConfig
from pipeline.training.distributed import World
from pipeline.training.optim import build_optimizer, build_schedule


def precision_of(cfg: TrainConfig, world: World) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16" if world.device.type == "cuda" else "fp32"


def deepspeed_config(cfg: TrainConfig, world: World, load_universal: bool = False) -> dict:
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.global_batch(world.size),
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": precision_of(cfg, world) == "bf16"},
        "zero_allow_untested_optimizer": True,  # torch's AdamW: no DeepSpeed op to compile
        "steps_per_print": 2**31 - 1,  # we log ourselves
        "checkpoint": {"load_universal": load_universal},
    }


def build_engine(cfg: TrainConfig, model: nn.Module, world: World, load_universal: bool = False):
    """``deepspeed.initialize`` with our AdamW groups and schedule (stepped once per optimizer step).

    ``load_universal``: the checkpoint to resume was saved on another number of ranks
    (see ``checkpoint.resume``)."""
    import deepspeed

    scalars_as_vectors(model)
    if cfg.zero_stage == 3:
        register_external_parameters(model)
    optimizer = build_optimizer(model, cfg.optim, world.device)
    schedule = build_schedule(optimizer, cfg.optim, cfg.steps)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=schedule,
        config=deepspeed_config(cfg, world, load_universal),
    )
    return engine


def scalars_as_vectors(model: nn.Module) -> None:
    """Give 0-d parameters (open_clip's ``logit_scale``, the pooler's) shape [1], in place.

    DeepSpeed 0.19 broadcasts parameters as ``p.data.view(torch.uint8)``, which fails on 0-d
    tensors. Every use of a temperature broadcasts, so [1] computes the same; the export
    restores open_clip's shapes.
    """
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if p.ndim == 0:
                setattr(module, name, nn.Parameter(p.detach().reshape(1), requires_grad=p.requires_grad))


def register_external_parameters(model: nn.Module) -> None:
    """Tell ZeRO-3 which parameters are read outside their own module's ``forward``.

    ZeRO-3 gathers a module's parameters around that module's forward. Dense features and text
    encoding use open_clip's towers piecewise (``visual._embeds``, ``visual.proj``, the text
    positions and projection, the last block's value weights), so those parameters are declared
    as used by the top-level forward. Nothing else is gathered early.
    """
    from deepspeed.runtime.zero import register_external_parameter

    clip = model.clip
    external = [
        clip.positional_embedding,
        clip.text_projection,
        clip.logit_scale,
        clip.visual.class_embedding,
        clip.visual.positional_embedding,
        clip.visual.proj,
        *clip.visual.transformer.resblocks[-1].attn.parameters(),
    ]
    if model.pooler is not None:
        external.append(model.pooler.logit_scale)  # read after the pooler's forward returns
    if getattr(model.region_head, "logit_scale", None) is not None:
        external.append(model.region_head.logit_scale)  # read outside the head's forward
    for p in external:
        if isinstance(p, torch.nn.Parameter):
            register_external_parameter(model, p)
