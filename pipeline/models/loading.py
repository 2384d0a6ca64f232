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
from typing import Any

import open_clip
import torch

from pipeline.config import BadInput, ConfigError, build, one_line
from pipeline.models import open_clip_dir
from pipeline.models.backbone import image_stats
from pipeline.models.config import ModelConfig
from pipeline.models.fine_clip import FineGrainedCLIP
from pipeline.models.open_clip_dir import read_export_file

HEADS = "heads.pt"
MODEL_CONFIG = "model_config.json"
HEAD_NAMES = ("pooler", "region_head")


def load_exported(export_dir: str | Path) -> open_clip.CLIP:
    """An open_clip model with the exported weights (strict: every key must match); what
    ``open_clip.create_model("local-dir:EXPORT")`` gives."""
    export_dir = Path(export_dir)
    config, state = open_clip_dir.read(export_dir)
    try:
        model = open_clip.CLIP(**config["model_cfg"])
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise BadInput(
            f"{export_dir / open_clip_dir.CONFIG}: model_cfg is not an open_clip CLIP's ({e!r})"
        ) from e
    load_weights(model, state, export_dir / open_clip_dir.WEIGHTS)
    open_clip_dir.set_preprocess(model, config)
    return model.eval()


def load_fine_grained(export_dir: str | Path) -> FineGrainedCLIP:
    """The training model (CLIP + the heads it trained) from an export (strict, in eval mode)."""
    export_dir = Path(export_dir)
    model_cfg = read_model_config(export_dir / MODEL_CONFIG)
    heads_path = export_dir / HEADS
    heads = read_export_file(heads_path, _read_heads) if heads_path.exists() else {}
    model = untrained(model_cfg, heads={k.partition(".")[0] for k in heads}, source=heads_path)
    config, clip = open_clip_dir.read(export_dir)
    load_weights(model, {**{f"clip.{k}": v for k, v in clip.items()}, **heads}, export_dir)
    open_clip_dir.set_preprocess(model.clip, config)
    return model.eval()


def read_model_config(path: Path) -> ModelConfig:
    """The :class:`ModelConfig` of an export's ``model_config.json``."""
    return model_config(read_export_file(path, lambda p: json.loads(p.read_text())), path)


def model_config(data: Any, path: Path) -> ModelConfig:
    """``data``, read from ``path`` (an export's, a run's), as our model config of a model that
    open_clip knows; a user error naming ``path`` when it is not."""
    try:
        cfg = build(ModelConfig, data)
    except ConfigError as e:
        raise BadInput(f"{path}: not our model config ({e})") from None
    if open_clip.get_model_config(cfg.name) is None:
        raise BadInput(f"{path}: model {cfg.name[:100]!r} is not an open_clip model")
    return cfg


def untrained(model_cfg: ModelConfig, heads: set[str], source: str | Path = "checkpoint") -> FineGrainedCLIP:
    """The model's skeleton with the named heads: no pretrained download, since its weights are
    about to be replaced; the image statistics of the weights it was trained from. ``source``:
    the file the head names come from, for the message when one is not ours."""
    unknown = heads - set(HEAD_NAMES)
    if unknown:
        raise BadInput(f"{source}: unexpected modules {sorted(unknown)[:5]} (ours: {', '.join(HEAD_NAMES)})")
    model = FineGrainedCLIP(
        dataclasses.replace(model_cfg, pretrained=None),
        with_pooler="pooler" in heads,
        with_region_head="region_head" in heads,
    )
    open_clip_dir.set_preprocess(model.clip, {"preprocess_cfg": image_stats(model_cfg)})
    return model


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """``model.load_state_dict(state, strict=True)``; weights that do not fit the model (other
    keys or shapes: another model's, or a config that is not theirs) are a user error naming
    ``source``."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise BadInput(
            f"{source}: weights do not fit the model its config describes ({one_line(e, 300)})"
        ) from None


def _read_heads(path: Path) -> dict[str, torch.Tensor]:
    heads = torch.load(path, weights_only=True)
    if not isinstance(heads, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in heads.items()
    ):
        raise ValueError("not a mapping of names to tensors")
    return heads
