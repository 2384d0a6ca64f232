"""A training checkpoint → an export folder that open_clip (and ``pipeline.models.loading``)
loads: the ZeRO partitions consolidated into fp32 weights, read as data only."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import open_clip
import torch

from pipeline.config import BadInput, ConfigError, InputNotFound, build, one_line, to_dict
from pipeline.lineage import LINEAGE_FILE
from pipeline.models import FineGrainedCLIP, ModelConfig, open_clip_dir
from pipeline.models.loading import HEADS, MODEL_CONFIG, load_weights, model_config, untrained
from pipeline.models.open_clip_dir import read_export_file
from pipeline.training.checkpoint import latest_tag, tensors_only

log = logging.getLogger(__name__)


def export(checkpoint_dir: Path, tag: str, model_cfg: ModelConfig, zero_stage: int, out: Path) -> Path:
    """Consolidate the ZeRO checkpoint ``checkpoint_dir/tag`` into the files of an export
    (``pipeline.models.loading`` lists them); the run's lineage goes with them."""
    state = _fp32_weights(checkpoint_dir, tag, zero_stage)
    source = checkpoint_dir / tag
    model = untrained(
        model_cfg, heads={k.partition(".")[0] for k in state if not k.startswith("clip.")}, source=source
    )
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    fits = {k for k, v in state.items() if k in shapes and v.numel() == shapes[k].numel()}
    # 0-d parameters trained as [1]; load_weights names what does not fit
    load_weights(model, {k: v.reshape(shapes[k]) if k in fits else v for k, v in state.items()}, source)
    write_export(model, model_cfg, out, f"trained to {tag}")
    if (checkpoint_dir / tag / LINEAGE_FILE).exists():
        shutil.copy(checkpoint_dir / tag / LINEAGE_FILE, out / LINEAGE_FILE)
    log.info("exported %s", out)
    return out


def write_export(model: FineGrainedCLIP, model_cfg: ModelConfig, out: Path, what: str) -> None:
    """``model``'s export files: open_clip's layout for the CLIP, then our heads and config
    (``model_cfg`` as trained: ``pretrained`` names the weights it started from)."""
    out.mkdir(parents=True, exist_ok=True)
    clip_cfg = open_clip.get_model_config(model_cfg.name)
    clip_cfg["text_cfg"]["context_length"] = model.clip.context_length
    open_clip_dir.write(out, model.clip, clip_cfg)
    heads = {k: v for k, v in model.state_dict().items() if not k.startswith("clip.")}
    if heads:
        torch.save(heads, out / HEADS)
    (out / MODEL_CONFIG).write_text(json.dumps(to_dict(model_cfg), indent=1))
    (out / "README.txt").write_text(
        f"{model_cfg.name} {what}, text context {model.clip.context_length} tokens.\n"
        "open_clip:      model, _, preprocess = open_clip.create_model_and_transforms('local-dir:THIS')\n"
        "                tokenizer = open_clip.get_tokenizer('local-dir:THIS')\n"
        "with its heads: from pipeline.models.loading import load_fine_grained; load_fine_grained(THIS)\n"
    )


def export_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    """:func:`export` for a run folder (its latest checkpoint) or one checkpoint tag folder in it."""
    path = Path(checkpoint)
    if (path / "checkpoints").is_dir():
        run_dir, checkpoint_dir, tag = path, path / "checkpoints", latest_tag(path / "checkpoints")
    elif path.parent.name == "checkpoints" and path.is_dir():
        run_dir, checkpoint_dir, tag = path.parent.parent, path.parent, path.name
    else:
        raise InputNotFound(f"{path}: neither a run folder (with checkpoints/) nor a checkpoint in one")
    model_cfg, zero_stage = run_config(run_dir / "config.json")
    return export(checkpoint_dir, tag, model_cfg, zero_stage, Path(out))


@dataclass(frozen=True)
class _ExportKeys:
    """The keys of a run's ``config.json`` (a :class:`TrainConfig`) that an export needs."""

    model: dict[str, Any]
    zero_stage: Literal[0, 1, 2, 3]


def run_config(path: Path) -> tuple[ModelConfig, int]:
    """(model config, ZeRO stage) of a training run's ``config.json``; a user error naming the
    file when it is not one of ours (another tool's ``config.json`` beside a ``checkpoints/``)."""
    data = read_export_file(path, lambda p: json.loads(p.read_text()))
    try:
        if not isinstance(data, dict):
            raise ConfigError(f"expected a mapping, got {type(data).__name__}")
        keys = build(_ExportKeys, {k: data[k] for k in ("model", "zero_stage") if k in data})
    except ConfigError as e:
        raise BadInput(f"{path}: not the config of a training run of ours ({e})") from None
    return model_config(keys.model, path), keys.zero_stage


def _fp32_weights(checkpoint_dir: Path, tag: str, zero_stage: int) -> dict[str, torch.Tensor]:
    """The whole model's fp32 weights: consolidated from ZeRO's partitions (stages 1-3), or the
    module state that ZeRO-0 saves unpartitioned (in the training precision). The checkpoint
    may be someone else's: it is read as data (``tensors_only``)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    try:
        with tensors_only():
            if zero_stage == 0:
                states = torch.load(checkpoint_dir / tag / "mp_rank_00_model_states.pt", map_location="cpu")
                return {k: v.float() for k, v in states["module"].items()}
            return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)
    except pickle.UnpicklingError as e:
        raise BadInput(
            f"{checkpoint_dir / tag}: holds objects other than tensors and DeepSpeed's "
            f"metadata, refused unread ({str(e).splitlines()[-1][:200]})"
        ) from None
    except (OSError, ValueError, RuntimeError, EOFError, KeyError) as e:  # truncated, partial, foreign
        raise BadInput(
            f"{checkpoint_dir / tag}: not a readable checkpoint ({type(e).__name__}: {one_line(e)})"
        ) from None
