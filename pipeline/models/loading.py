"""Loading a trained model from an export folder: the library's public way in.

An export (written by ``pipeline.training.export``) holds::

    open_clip_model.safetensors  the CLIP state dict      open_clip_config.json  its open_clip config
    heads.pt                     the β-CLIP pooler / region head, when trained
    model_config.json            our ModelConfig           lineage.json           where it came from

The first two are open_clip's own layout (``open_clip_dir``): ``local-dir:EXPORT`` loads them in
plain open_clip. Every file is read as data (safetensors, ``weights_only=True``): an export may
come from anyone.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import open_clip
import torch

from pipeline.config import build
from pipeline.models import open_clip_dir
from pipeline.models.backbone import image_stats
from pipeline.models.config import ModelConfig
from pipeline.models.fine_clip import FineGrainedCLIP

HEADS = "heads.pt"
MODEL_CONFIG = "model_config.json"
HEAD_NAMES = ("pooler", "region_head")


def load_exported(export_dir: str | Path) -> open_clip.CLIP:
    """An open_clip model with the exported weights (strict: every key must match); what
    ``open_clip.create_model("local-dir:EXPORT")`` gives."""
    config, state = open_clip_dir.read(Path(export_dir))
    model = open_clip.CLIP(**config["model_cfg"])
    model.load_state_dict(state, strict=True)
    open_clip_dir.set_preprocess(model, config)
    return model.eval()


def load_fine_grained(export_dir: str | Path) -> FineGrainedCLIP:
    """The training model (CLIP + the heads it trained) from an export (strict, in eval mode)."""
    export_dir = Path(export_dir)
    model_cfg = build(ModelConfig, json.loads((export_dir / MODEL_CONFIG).read_text()))
    heads = torch.load(export_dir / HEADS, weights_only=True) if (export_dir / HEADS).exists() else {}
    model = untrained(model_cfg, heads={k.partition(".")[0] for k in heads})
    config, clip = open_clip_dir.read(export_dir)
    model.load_state_dict({**{f"clip.{k}": v for k, v in clip.items()}, **heads}, strict=True)
    open_clip_dir.set_preprocess(model.clip, config)
    return model.eval()


def untrained(model_cfg: ModelConfig, heads: set[str]) -> FineGrainedCLIP:
    """The model's skeleton with the named heads: no pretrained download, since its weights are
    about to be replaced; the image statistics of the weights it was trained from."""
    unknown = heads - set(HEAD_NAMES)
    if unknown:
        raise ValueError(f"checkpoint: unexpected modules {sorted(unknown)}")
    model = FineGrainedCLIP(
        dataclasses.replace(model_cfg, pretrained=None),
        with_pooler="pooler" in heads,
        with_region_head="region_head" in heads,
    )
    open_clip_dir.set_preprocess(model.clip, {"preprocess_cfg": image_stats(model_cfg)})
    return model
