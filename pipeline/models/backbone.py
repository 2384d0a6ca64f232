"""The open_clip backbone: created by name and pretrained tag, checked, optionally given a long context."""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

from pipeline.config import ConfigError
from pipeline.models import open_clip_dir
from pipeline.models.config import ModelConfig
from pipeline.models.long_context import extend_context

TINY_MODEL = "FG-Tiny-16"  # 128 px, 8x8 patch grid, width 64, 2+2 layers: tests and the CPU demo
open_clip.add_model_config(Path(__file__).parent / "model_configs")


def create_backbone(cfg: ModelConfig) -> open_clip.CLIP:
    """``open_clip.create_model(cfg.name, cfg.pretrained)``, extended to 248 tokens if configured.

    Pretrained weights are loaded at their native 77-token context first, then interpolated, so
    ``pretrained="openai"`` and a Long-CLIP context combine as in β-CLIP. An export of ours (its
    folder, or its weights file) loads at the context it was trained with: open_clip would
    interpolate a 248-token one down to 77 without a word.
    """
    export = open_clip_dir.folder_of(cfg.pretrained)
    try:
        clip = open_clip.create_model(cfg.name, pretrained=None if export else cfg.pretrained)
    except RuntimeError as e:  # open_clip's word for an unknown model name or pretrained tag
        raise ConfigError(f"model: {str(e).splitlines()[0][:300]} (model.name, model.pretrained)") from None
    _check_supported(clip, cfg.name)
    if export:
        _load_export(clip, export, cfg)
    if cfg.context_length != clip.context_length:
        extend_context(clip, freeze_first=cfg.freeze_first_20)
    return clip


def image_stats(cfg: ModelConfig) -> dict:
    """The mean and std the weights ``cfg.pretrained`` were trained with (an open_clip tag's, an
    export's), as open_clip's preprocess config; empty: open_clip's defaults (OpenAI's)."""
    export = open_clip_dir.folder_of(cfg.pretrained)
    if export:
        pretrained = open_clip_dir.read_config(export)["preprocess_cfg"]
    else:
        pretrained = open_clip.get_pretrained_cfg(cfg.name, cfg.pretrained or "")
    return {key: pretrained[key] for key in ("mean", "std") if key in pretrained}


def _load_export(clip: open_clip.CLIP, export: Path, cfg: ModelConfig) -> None:
    config, state = open_clip_dir.read(export)
    context = config["model_cfg"]["text_cfg"]["context_length"]
    if context > cfg.context_length:
        raise ConfigError(
            f"model.context_length: {cfg.context_length}, but model.pretrained={cfg.pretrained} "
            f"was trained with {context} tokens (set model.context_length={context})"
        )
    if context != clip.context_length:
        extend_context(clip, freeze_first=cfg.freeze_first_20)
    if _shapes(state) != _shapes(clip.state_dict()):
        raise ConfigError(f"model.pretrained: {cfg.pretrained} is not a {cfg.name} (model.name)")
    clip.load_state_dict(state, strict=True)
    open_clip_dir.set_preprocess(clip, config)


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


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
        raise ConfigError(
            f"model.name: {name!r} is not an open_clip CLIP with a class-token ViT and a "
            "causal 77-token text transformer (what dense features and Long-CLIP need)"
        )
