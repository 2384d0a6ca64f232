"""Checkpoints: DeepSpeed's sharded saves, exact resume, pruning, and an open_clip export.

Layout of a run folder::

    checkpoints/step-00000500/   DeepSpeed tag (model + optimizer + scheduler shards) and
                                 rng-rank<r>.pt (each rank's RNG states)
    checkpoints/latest           DeepSpeed's pointer to the newest complete tag
    export/                      open_clip_model.pt, open_clip_config.json, heads.pt

Resume restores model, optimizer, scheduler and RNGs; the loader position is a function of
the step (``start_batch = step × grad_accum``), so the same batches follow.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import open_clip
import torch

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
    tag_dir = ckpt_dir / (ckpt_dir / "latest").read_text().strip()
    _set_rng_state(torch.load(tag_dir / f"rng-rank{world.rank}.pt", weights_only=False))
    log.info("resumed from %s (step %d)", tag_dir, client_state["step"])
    return int(client_state["step"])


def export(run_dir: Path, step: int, model_name: str, context_length: int) -> Path:
    """Consolidate the ZeRO checkpoint of ``step`` into fp32 weights that open_clip loads.

    ``open_clip_model.pt`` holds the CLIP state dict, ``open_clip_config.json`` its model config
    (context length as trained), ``heads.pt`` the β-CLIP pooler / region head when present.
    Load with :func:`load_exported`.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag=tag_of(step))
    out = run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    config = open_clip.get_model_config(model_name)
    config["text_cfg"]["context_length"] = context_length
    shapes = {k: v.shape for k, v in open_clip.CLIP(**config).state_dict().items()}
    clip = {k: v.reshape(shapes[k]) for k, v in
            ((k.removeprefix("clip."), v) for k, v in state.items() if k.startswith("clip."))}
    heads = {k: v for k, v in state.items() if not k.startswith("clip.")}
    torch.save(clip, out / "open_clip_model.pt")
    if heads:
        torch.save(heads, out / "heads.pt")
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=1))
    (out / "README.txt").write_text(
        f"{model_name} trained to step {step}.\n"
        "from pipeline.training.checkpoint import load_exported; model = load_exported(this_folder)\n")
    log.info("exported %s", out)
    return out


def load_exported(export_dir: str | Path) -> open_clip.CLIP:
    """An open_clip model with the exported weights (strict: every key must match)."""
    export_dir = Path(export_dir)
    config = json.loads((export_dir / "open_clip_config.json").read_text())
    model = open_clip.CLIP(**config)
    model.load_state_dict(torch.load(export_dir / "open_clip_model.pt", weights_only=True), strict=True)
    return model.eval()


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
