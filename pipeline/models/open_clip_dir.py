"""The open_clip part of an export, in open_clip's own folder layout (what ``push_to_hf_hub``
writes), so that plain open_clip loads it without this library::

    open_clip_config.json        {"model_cfg": ..., "preprocess_cfg": ...}
    open_clip_model.safetensors  the CLIP state dict

``open_clip.create_model_and_transforms("local-dir:EXPORT")`` and
``open_clip.get_tokenizer("local-dir:EXPORT")`` then give the model, the preprocessing and the
tokenizer (its context, 248 tokens after Long-CLIP) that our training and evaluation use; the
same folder uploaded to the Hugging Face hub loads as ``hf-hub:ORG/REPO``. safetensors holds
tensors only: loading one runs no code, whoever wrote it.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import open_clip
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline.config import BadInput, InputNotFound

T = TypeVar("T")

CONFIG = "open_clip_config.json"
WEIGHTS = "open_clip_model.safetensors"


def preprocess_cfg(clip: open_clip.CLIP) -> dict:
    """What our training and evaluation feed ``clip`` (``models/transform.py``), in open_clip's
    terms: the whole image squashed to the square input (nothing cropped), bicubic, normalised
    with the statistics its pretrained weights were trained with."""
    visual = clip.visual
    return {
        "size": list(visual.image_size),
        "mode": "RGB",
        "mean": list(visual.image_mean),
        "std": list(visual.image_std),
        "interpolation": "bicubic",
        "resize_mode": "squash",
        "fill_color": 0,
    }


def write(out: Path, clip: open_clip.CLIP, model_cfg: dict) -> None:
    """``clip``'s weights and its open_clip config (``model_cfg``, the context as trained)."""
    state = {k: v.detach().contiguous() for k, v in clip.state_dict().items()}
    save_file(state, out / WEIGHTS)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg(clip)}
    (out / CONFIG).write_text(json.dumps(config, indent=1))


def read(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(open_clip config, CLIP state dict) of an export."""
    return read_config(folder), read_export_file(folder / WEIGHTS, load_file)


def read_config(folder: Path) -> dict:
    """The open_clip config, checked to have what we read of it."""
    path = folder / CONFIG
    config = read_export_file(path, lambda p: json.loads(p.read_text()))
    model_cfg = config.get("model_cfg") if isinstance(config, dict) else None
    text_cfg = model_cfg.get("text_cfg") if isinstance(model_cfg, dict) else None
    context = text_cfg.get("context_length") if isinstance(text_cfg, dict) else None
    if not (isinstance(context, int) and isinstance(config.get("preprocess_cfg"), dict)):
        raise BadInput(
            f"{path}: not an open_clip config (expected model_cfg with text_cfg.context_length, "
            "and preprocess_cfg)"
        )
    return config


def read_export_file(path: Path, read: Callable[[Path], T]) -> T:
    """``read(path)``, where an export's file that is missing or unreadable (truncated, corrupt,
    not what its name says) is a one-line :class:`UserError` naming it: exports come from anyone."""
    try:
        return read(path)
    except FileNotFoundError:
        raise InputNotFound(f"{path}: missing") from None
    except pickle.UnpicklingError as e:  # torch.load(weights_only=True): not tensors, or not a pickle
        raise BadInput(f"{path}: not tensors alone, refused unread ({_first_line(e)})") from None
    except (OSError, ValueError, RuntimeError, EOFError, RecursionError, SafetensorError) as e:
        # ValueError: bad JSON or UTF-8; RuntimeError: torch.load of a truncated zip
        raise BadInput(f"{path}: unreadable ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"


def folder_of(pretrained: str | None) -> Path | None:
    """The export that a ``model.pretrained`` value names (the folder, or its weights file);
    None for an open_clip tag, another checkpoint file, or none."""
    if not pretrained:
        return None
    path = Path(pretrained)
    folder = path.parent if path.name == WEIGHTS else path
    return folder if (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file() else None


def set_preprocess(clip: open_clip.CLIP, config: dict) -> None:
    """Give ``clip`` an export's image statistics (``visual.image_mean``/``image_std``)."""
    merged = {**getattr(clip.visual, "preprocess_cfg", {}), **config["preprocess_cfg"]}  # set by create_model
    open_clip.set_model_preprocess_cfg(clip, merged)
