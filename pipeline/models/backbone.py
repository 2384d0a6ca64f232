"""The open_clip backbone: created by name and pretrained tag, checked, optionally given a long context."""

from __future__ import annotations

import logging
from pathlib import Path

import open_clip
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

from pipeline.models.config import ModelConfig
from pipeline.models.long_context import extend_context

log = logging.getLogger(__name__)

TINY_MODEL = "FG-Tiny-16"  # 128 px, 8x8 patch grid, width 64, 2+2 layers: tests and the CPU demo
open_clip.add_model_config(Path(__file__).parent / "model_configs")


def create_backbone(cfg: ModelConfig) -> open_clip.CLIP:
    """``open_clip.create_model(cfg.name, cfg.pretrained)``, extended to 248 tokens if configured.

    Pretrained weights are loaded at their native 77-token context first, then interpolated, so
    ``pretrained="openai"`` and a Long-CLIP context combine as in β-CLIP.
    """
    clip = open_clip.create_model(cfg.name, pretrained=cfg.pretrained)
    _check_supported(clip, cfg.name)
    if cfg.context_length != clip.context_length:
        extend_context(clip, freeze_first=cfg.freeze_first_20)
    log.info("backbone %s (pretrained=%s), text context %d", cfg.name, cfg.pretrained, clip.context_length)
    return clip


def _check_supported(clip: object, name: str) -> None:
    """Dense features and our text encoding reuse the internals of open_clip's native CLIP towers."""
    visual = getattr(clip, "visual", None)
    supported = (
        isinstance(clip, open_clip.CLIP)
        and isinstance(visual, VisionTransformer)
        and visual.attn_pool is None
        and visual.pool_type == "tok"
        and not visual.final_ln_after_pool
        and isinstance(visual.transformer.resblocks[-1], ResidualAttentionBlock)
        and clip.text_pool_type == "argmax"
        and clip.attn_mask is not None
        and clip.context_length == 77
    )
    if not supported:
        raise ValueError(
            f"model.name: {name!r} is not an open_clip CLIP with a class-token ViT and a "
            "causal 77-token text transformer (what dense features and Long-CLIP need)"
        )
