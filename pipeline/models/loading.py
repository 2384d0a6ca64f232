"""Loading a trained model from an export folder: the library's public way in.

An export (written by ``pipeline.training.export``) holds::

    open_clip_model.pt     the CLIP state dict            open_clip_config.json  its open_clip config
    heads.pt               the β-CLIP pooler / region head, when trained
    model_config.json      our ModelConfig                 lineage.json           where it came from

Every file is loaded with ``weights_only=True``: an export may come from anyone.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import open_clip
import torch

from pipeline.config import build
from pipeline.models.config import ModelConfig
from pipeline.models.fine_clip import FineGrainedCLIP

CLIP_WEIGHTS = "open_clip_model.pt"
CLIP_CONFIG = "open_clip_config.json"
HEADS = "heads.pt"
MODEL_CONFIG = "model_config.json"
HEAD_NAMES = ("pooler", "region_head")


def load_exported(export_dir: str | Path) -> open_clip.CLIP:
    """An open_clip model with the exported weights (strict: every key must match)."""
    export_dir = Path(export_dir)
    model = open_clip.CLIP(**json.loads((export_dir / CLIP_CONFIG).read_text()))
    model.load_state_dict(torch.load(export_dir / CLIP_WEIGHTS, weights_only=True), strict=True)
    return model.eval()


def load_fine_grained(export_dir: str | Path) -> FineGrainedCLIP:
    """The training model (CLIP + the heads it trained) from an export (strict, in eval mode)."""
    export_dir = Path(export_dir)
    model_cfg = build(ModelConfig, json.loads((export_dir / MODEL_CONFIG).read_text()))
    heads = torch.load(export_dir / HEADS, weights_only=True) if (export_dir / HEADS).exists() else {}
    model = untrained(model_cfg, heads={k.partition(".")[0] for k in heads})
    clip = torch.load(export_dir / CLIP_WEIGHTS, weights_only=True)
    model.load_state_dict({**{f"clip.{k}": v for k, v in clip.items()}, **heads}, strict=True)
    return model.eval()


def untrained(model_cfg: ModelConfig, heads: set[str]) -> FineGrainedCLIP:
    """The model's skeleton with the named heads: no pretrained download, since its weights are
    about to be replaced."""
    unknown = heads - set(HEAD_NAMES)
    if unknown:
        raise ValueError(f"checkpoint: unexpected modules {sorted(unknown)}")
    return FineGrainedCLIP(
        dataclasses.replace(model_cfg, pretrained=None),
        with_pooler="pooler" in heads,
        with_region_head="region_head" in heads,
    )
