"""Checkpoints: DeepSpeed's sharded saves, exact resume, pruning, and an open_clip export.

Layout of a run folder::

    checkpoints/step-00000500/   DeepSpeed tag (model + optimizer + scheduler shards),
                                 rng-rank<r>.pt (each rank's RNG states), lineage.json
    checkpoints/latest           DeepSpeed's pointer to the newest complete tag
    export/                      open_clip_model.pt, open_clip_config.json, heads.pt,
                                 model_config.json, lineage.json (see :func:`export`)

Resume restores model, optimizer, scheduler and RNGs; the loader position is a function of
the step (``start_batch = step × grad_accum``), so the same batches follow.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import open_clip
import torch

from pipeline.config import build, to_dict
from pipeline.lineage import LINEAGE_FILE
from pipeline.models import FineGrainedCLIP, ModelConfig
from pipeline.training.distributed import World, barrier

log = logging.getLogger(__name__)

TAG_PREFIX = "step-"


def tag_of(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def save(engine, run_dir: Path, step: int, world: World, keep_last: int) -> Path:
    """Every rank writes its shards; rank 0 then drops all but the newest ``keep_last`` tags."""
    ckpt_dir = run_dir / "checkpoints"
    tag = tag_of(step)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"step": step})
    torch.save(_rng_state(), ckpt_dir / tag / f"rng-rank{world.rank}.pt")
    barrier()
    if world.is_main:
        shutil.copy(run_dir / LINEAGE_FILE, ckpt_dir / tag / LINEAGE_FILE)
        for old in sorted(ckpt_dir.glob(f"{TAG_PREFIX}*"))[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint %s", ckpt_dir / tag)
    barrier()
    return ckpt_dir / tag


def resume(engine, run_dir: Path, world: World) -> int:
    """Load the latest checkpoint if there is one; returns the step to continue from (0: none)."""
    ckpt_dir = run_dir / "checkpoints"
    if not (ckpt_dir / "latest").exists():
        return 0
    path, client_state = engine.load_checkpoint(str(ckpt_dir))
    if path is None:
        raise RuntimeError(f"{ckpt_dir}: 'latest' names a checkpoint DeepSpeed could not load")
    tag_dir = ckpt_dir / latest_tag(ckpt_dir)
    _set_rng_state(torch.load(tag_dir / f"rng-rank{world.rank}.pt", weights_only=False))
    log.info("resumed from %s (step %d)", tag_dir, client_state["step"])
    return int(client_state["step"])


def export(checkpoint_dir: Path, tag: str, model_cfg: ModelConfig, out: Path) -> Path:
    """Consolidate the ZeRO checkpoint ``checkpoint_dir/tag`` into fp32 weights open_clip loads.

    ``open_clip_model.pt`` holds the CLIP state dict and ``open_clip_config.json`` its model
    config (context length as trained): :func:`load_exported` needs nothing else.
    ``heads.pt`` holds the β-CLIP pooler / region head when trained, ``model_config.json`` our
    :class:`ModelConfig`: :func:`load_fine_grained` rebuilds the whole training model from them.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)
    model = _untrained(model_cfg, heads={k.partition(".")[0] for k in state if not k.startswith("clip.")})
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    state = {k: v.reshape(shapes[k]) for k, v in state.items()}  # 0-d parameters trained as [1]
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k.removeprefix("clip."): v for k, v in state.items() if k.startswith("clip.")},
               out / "open_clip_model.pt")
    heads = {k: v for k, v in state.items() if not k.startswith("clip.")}
    if heads:
        torch.save(heads, out / "heads.pt")
    config = open_clip.get_model_config(model_cfg.name)
    config["text_cfg"]["context_length"] = model_cfg.context_length
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=1))
    (out / "model_config.json").write_text(json.dumps(to_dict(model_cfg), indent=1))
    if (checkpoint_dir / tag / LINEAGE_FILE).exists():
        shutil.copy(checkpoint_dir / tag / LINEAGE_FILE, out / LINEAGE_FILE)
    (out / "README.txt").write_text(
        f"{model_cfg.name} trained to {tag}.\n"
        "open_clip model: from pipeline.training.checkpoint import load_exported; load_exported(this)\n"
        "with its heads:  from pipeline.training.checkpoint import load_fine_grained; load_fine_grained(this)\n")
    log.info("exported %s", out)
    return out


def export_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    """:func:`export` for a run folder (its latest checkpoint) or one checkpoint tag folder in it."""
    path = Path(checkpoint)
    if (path / "checkpoints").is_dir():
        run_dir, checkpoint_dir, tag = path, path / "checkpoints", latest_tag(path / "checkpoints")
    elif path.parent.name == "checkpoints" and path.is_dir():
        run_dir, checkpoint_dir, tag = path.parent.parent, path.parent, path.name
    else:
        raise FileNotFoundError(f"{path}: neither a run folder (with checkpoints/) nor a checkpoint in one")
    config = json.loads((run_dir / "config.json").read_text())
    return export(checkpoint_dir, tag, build(ModelConfig, config["model"]), Path(out))


def latest_tag(checkpoint_dir: Path) -> str:
    """The tag DeepSpeed's ``latest`` pointer names: the newest complete checkpoint."""
    pointer = checkpoint_dir / "latest"
    if not pointer.exists():
        raise FileNotFoundError(f"{checkpoint_dir}: no checkpoint (no 'latest' file)")
    return pointer.read_text().strip()


def load_exported(export_dir: str | Path) -> open_clip.CLIP:
    """An open_clip model with the exported weights (strict: every key must match)."""
    export_dir = Path(export_dir)
    config = json.loads((export_dir / "open_clip_config.json").read_text())
    model = open_clip.CLIP(**config)
    model.load_state_dict(torch.load(export_dir / "open_clip_model.pt", weights_only=True), strict=True)
    return model.eval()


def load_fine_grained(export_dir: str | Path) -> FineGrainedCLIP:
    """The training model (CLIP + the heads it trained) from an export (strict, in eval mode)."""
    export_dir = Path(export_dir)
    model_cfg = build(ModelConfig, json.loads((export_dir / "model_config.json").read_text()))
    heads_file = export_dir / "heads.pt"
    heads = torch.load(heads_file, weights_only=True) if heads_file.exists() else {}
    model = _untrained(model_cfg, heads={k.partition(".")[0] for k in heads})
    clip = torch.load(export_dir / "open_clip_model.pt", weights_only=True)
    state = {f"clip.{k}": v for k, v in clip.items()}
    model.load_state_dict({**state, **heads}, strict=True)
    return model.eval()


def _untrained(model_cfg: ModelConfig, heads: set[str]) -> FineGrainedCLIP:
    """The model's skeleton: no pretrained download, since its weights are about to be replaced."""
    unknown = heads - {"pooler", "region_head"}
    if unknown:
        raise ValueError(f"checkpoint: unexpected modules {sorted(unknown)}")
    return FineGrainedCLIP(dataclasses.replace(model_cfg, pretrained=None), with_pooler="pooler" in heads,
                           with_region_head="region_head" in heads)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
