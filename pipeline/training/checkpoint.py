"""Checkpoints: DeepSpeed's sharded saves, exact resume, pruning; loading them as data only.

Layout of a run folder::

    checkpoints/step-00000500/   DeepSpeed tag (model + optimizer + scheduler shards),
                                 rng-rank<r>.pt (each rank's RNG states), progress.json,
                                 lineage.json
    checkpoints/latest           the newest complete tag (written last, so never a partial one)
    export/                      the finished run's export (``pipeline.training.export``)

A checkpoint that cannot be written (a full disk, a quota, a rank that failed writing its part)
ends the run as :class:`CheckpointNotWritten`: ``latest`` still names the last complete tag, and
the torn one is removed when the run starts again (any tag past ``latest`` is one).

Resume restores model, optimizer, scheduler and RNGs; the loader continues at the number of
samples trained on (``start_batch = samples / (batch_size × ranks)``), so the same batches
follow. On a different number of ranks, ZeRO's partitions are re-cut first (see :func:`resume`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline import storage
from pipeline.config import BadInput, InputNotFound, JobIncomplete, build, one_line
from pipeline.lineage import LINEAGE_FILE
from pipeline.shards.manifest import is_plain_name
from pipeline.training.distributed import World, barrier

if TYPE_CHECKING:
    from pipeline.training.config import CheckpointConfig

log = logging.getLogger(__name__)

TAG_PREFIX = "step-"
TAG_PATTERN = re.compile(rf"{TAG_PREFIX}\d{{8}}")
PROGRESS_FILE = "progress.json"


def tag_of(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a run stands at a checkpoint: enough to resume it on any number of ranks."""

    step: int  # optimizer steps done
    samples: int  # samples trained on: the sum of the global batches so far
    world_size: int  # ranks that saved it (how ZeRO partitioned the optimizer state)
    global_batch: int  # samples per optimizer step when it was saved


class CheckpointNotWritten(JobIncomplete):
    """A checkpoint's files could not be written; the run resumes from ``latest``, the last
    complete one, once the cause (the message says it) is fixed."""


def save(engine, run_dir: Path, progress: Progress, world: World, keep_last: int) -> Path:
    """Every rank writes its shards and RNG states; rank 0 then completes the tag (progress,
    lineage, and last the ``latest`` pointer) and drops all but the newest ``keep_last`` tags."""
    ckpt_dir = run_dir / "checkpoints"
    tag = tag_of(progress.step)
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag, save_latest=False)
        torch.save(_rng_state(), ckpt_dir / tag / f"rng-rank{world.rank}.pt")
        barrier()
        if world.is_main:
            (ckpt_dir / tag / PROGRESS_FILE).write_text(json.dumps(dataclasses.asdict(progress)))
            shutil.copy(run_dir / LINEAGE_FILE, ckpt_dir / tag / LINEAGE_FILE)
            pointer = ckpt_dir / "latest.tmp"
            pointer.write_text(tag)
            pointer.replace(ckpt_dir / "latest")  # atomic: a crash leaves the previous tag in force
    except (OSError, RuntimeError) as e:  # torch.save says "file write failed", the peers "connection closed"
        raise CheckpointNotWritten(_not_written(ckpt_dir, tag, e)) from None
    if world.is_main:
        prune(ckpt_dir, keep_last)
        log.info("checkpoint %s", ckpt_dir / tag)
    barrier()
    return ckpt_dir / tag


def _not_written(ckpt_dir: Path, tag: str, error: Exception) -> str:
    free = storage.free_bytes(str(ckpt_dir))
    cause = f"{type(error).__name__}: {one_line(error)}" + (
        "" if free is None else f"; {free / 1e6:,.1f} MB free"
    )
    if (ckpt_dir / "latest").exists():
        return (
            f"checkpoint {ckpt_dir / tag} not written ({cause}); rerun to resume from {latest_tag(ckpt_dir)}"
        )
    return f"checkpoint {ckpt_dir / tag} not written ({cause}); the run has no checkpoint yet"


def remove_torn(ckpt_dir: Path) -> None:
    """Remove the tags past ``latest``: checkpoints a failure stopped before ``latest`` named
    them (only our tag folders; with no ``latest``, every tag is one)."""
    latest = latest_tag(ckpt_dir) if (ckpt_dir / "latest").exists() else ""
    for torn in _tags(ckpt_dir):
        if torn.name > latest:
            log.warning("removing %s: a checkpoint that was never completed", torn)
            shutil.rmtree(torn, ignore_errors=True)


class CheckpointManager:
    """The run's checkpoints: which one to resume, and when to save: every ``cfg.every`` steps,
    at the run's last step and when preempted, keeping the newest ``cfg.keep_last``."""

    def __init__(self, run_dir: Path, cfg: CheckpointConfig, world: World) -> None:
        self.run_dir, self.cfg, self.world = run_dir, cfg, world
        self.last_saved: Path | None = None
        if world.is_main:
            remove_torn(run_dir / "checkpoints")

    def latest(self) -> Progress | None:
        """The progress to resume from: None for a new run, or with ``resume: false``."""
        return latest_progress(self.run_dir) if self.cfg.resume else None

    def resume(self, engine, progress: Progress) -> None:
        resume(engine, self.run_dir, progress, self.world)

    def due(self, step: int, force: bool) -> bool:
        return force or step % self.cfg.every == 0

    def maybe_save(self, engine, progress: Progress, force: bool) -> None:
        if self.due(progress.step, force):
            self.last_saved = save(engine, self.run_dir, progress, self.world, self.cfg.keep_last)


def prune(ckpt_dir: Path, keep_last: int) -> None:
    """Remove all but the newest ``keep_last`` tags; only our tag folders, never what ``latest``
    names (tags sort by step: the zero-padded step is in the name). Called once ``latest`` is written."""
    latest = latest_tag(ckpt_dir)
    for old in _tags(ckpt_dir)[:-keep_last]:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)


def _tags(ckpt_dir: Path) -> list[Path]:
    """Our tag folders, oldest first."""
    return sorted(p for p in ckpt_dir.glob(f"{TAG_PREFIX}*") if p.is_dir() and TAG_PATTERN.fullmatch(p.name))


def latest_progress(run_dir: Path) -> Progress | None:
    """The progress of the run folder's latest checkpoint; None when it has none yet."""
    ckpt_dir = run_dir / "checkpoints"
    if not (ckpt_dir / "latest").exists():
        return None
    tag = latest_tag(ckpt_dir)
    path = ckpt_dir / tag / PROGRESS_FILE
    if not path.exists():
        raise InputNotFound(
            f"{path}: missing, so this checkpoint cannot be resumed (an older format?); "
            "checkpoint.resume=false starts the run over"
        )
    try:
        progress = build(Progress, json.loads(path.read_text()))
    except (ValueError, OSError) as e:  # ConfigError, bad JSON or UTF-8
        raise BadInput(f"{path}: not a checkpoint's progress ({one_line(e)})") from None
    if tag_of(progress.step) != tag:
        raise BadInput(f"{path}: step {progress.step}, but it is in {tag}")
    return progress


def resume(engine, run_dir: Path, progress: Progress, world: World) -> None:
    """Load the latest checkpoint into ``engine``: model, optimizer and schedule, and RNG states.

    Saved on as many ranks as now, each rank loads its own ZeRO partition and RNG states, and
    the run continues bit for bit. Saved on a different number of ranks (a job resized, fewer
    nodes left), the partitions no longer fit: rank 0 first converts the checkpoint into
    DeepSpeed's universal format (each parameter and its optimizer states whole, in one folder
    each) and every rank cuts its new partition from that; ``engine`` must have been built with
    ``load_universal=True``. RNG states are per rank, so they are then not restored.
    """
    ckpt_dir = run_dir / "checkpoints"
    tag = tag_of(progress.step)
    if progress.world_size == world.size:
        path, _ = engine.load_checkpoint(str(ckpt_dir), tag=tag)
        if path is None:
            raise RuntimeError(f"{ckpt_dir / tag}: DeepSpeed could not load this checkpoint")
        with tensors_only():
            _set_rng_state(torch.load(ckpt_dir / tag / f"rng-rank{world.rank}.pt"))
        log.info("resumed from %s (step %d)", ckpt_dir / tag, progress.step)
        return
    universal = ckpt_dir / "universal"
    if world.is_main:
        log.info(
            "%s was saved on %d ranks, this run has %d: converting it to a universal checkpoint",
            ckpt_dir / tag,
            progress.world_size,
            world.size,
        )
        shutil.rmtree(universal, ignore_errors=True)  # a conversion an earlier attempt left behind
        to_universal(ckpt_dir / tag, universal / tag)
    barrier()
    path, _ = engine.load_checkpoint(str(universal), tag=tag)
    if path is None:
        raise RuntimeError(f"{universal / tag}: DeepSpeed could not load this universal checkpoint")
    if engine.zero_optimization_stage() == 3:
        _repair_zero3_universal_groups(engine.optimizer.optimizer, universal / tag)
    barrier()
    if world.is_main:
        shutil.rmtree(universal)
    log.info(
        "resumed from %s (step %d), re-partitioned from %d to %d ranks",
        ckpt_dir / tag,
        progress.step,
        progress.world_size,
        world.size,
    )


def to_universal(tag_dir: Path, out: Path) -> Path:
    """DeepSpeed's ``ds_to_universal`` on one checkpoint tag, in this process (CPU only)."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    ds_to_universal(
        argparse.Namespace(
            input_folder=str(tag_dir),
            output_folder=str(out),
            num_extract_workers=1,
            num_merge_workers=1,
            keep_temp_folder=False,
            strict=True,
            inject_missing_state=True,
        )
    )
    return out


def latest_tag(checkpoint_dir: Path) -> str:
    """The tag DeepSpeed's ``latest`` pointer names: the newest complete checkpoint. Only a folder
    of ``checkpoint_dir`` by its plain name: ``../../other-run/step-N`` or an absolute path would
    resume from, or export, another run's weights."""
    pointer = checkpoint_dir / "latest"
    if not pointer.exists():
        raise InputNotFound(f"{checkpoint_dir}: no checkpoint (no 'latest' file)")
    try:
        tag = pointer.read_bytes().decode("utf-8", errors="replace").strip()
    except OSError as e:
        raise BadInput(f"{pointer}: unreadable ({e.strerror})") from None
    if not is_plain_name(tag) or not (checkpoint_dir / tag).is_dir():
        raise BadInput(
            f"{pointer}: names {tag[:100]!r}, which is not a checkpoint folder in {checkpoint_dir}"
        )
    return tag


def _repair_zero3_universal_groups(optimizer: torch.optim.Optimizer, universal_tag: Path) -> None:
    """Undo two defects of DeepSpeed 0.19's ZeRO-3 universal load, with several param groups.

    It gives every group group 0's hyperparameters (our backbone/heads lr and weight decay
    collapse into one), and one ``step`` tensor to all groups, so AdamW's in-place ``step += 1``
    advances it once per group per step (wrong bias correction). The saved groups are restored
    by position, and each state gets its own ``step``.
    """
    with tensors_only():
        saved = torch.load(universal_tag / "zero" / "optimizer_state.pt")["param_groups"]
    groups = optimizer.param_groups
    if len(saved) != len(groups):
        raise RuntimeError(f"{universal_tag}: param groups saved {len(saved)}, now {len(groups)}")
    for group, saved_group in zip(groups, saved):
        group.update({k: v for k, v in saved_group.items() if k != "params"})
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


@contextlib.contextmanager
def tensors_only() -> Iterator[None]:
    """Every ``torch.load`` inside, DeepSpeed's included, loads with ``weights_only=True``.

    DeepSpeed's ``zero_to_fp32`` calls ``torch.load(..., weights_only=False)``, which runs any
    code a checkpoint's pickle carries. Its optimizer-state files hold, besides tensors and plain
    values, three DeepSpeed types; those alone are allowed (``safe_globals``), with the NumPy
    array types that RNG files of earlier versions hold. Anything else in a pickle is refused:
    ``UnpicklingError``.
    """
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    from numpy._core.multiarray import _reconstruct

    allowed = [
        LossScaler,
        ZeroStageEnum,
        fragment_address,
        _reconstruct,
        np.ndarray,
        np.dtype,
        np.dtypes.UInt32DType,
    ]
    load = torch.load

    def load_tensors(*args, **kwargs):
        return load(*args, **{**kwargs, "weights_only": True})

    torch.load = load_tensors
    try:
        with torch.serialization.safe_globals(allowed):
            yield
    finally:
        torch.load = load


def _rng_state() -> dict:
    """Every generator's state as tensors and plain values: it loads with ``weights_only=True``."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": pos,
        "has_gauss": has_gauss,
        "gauss": gauss,
    }
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    saved = state["numpy"]
    if isinstance(saved, dict):
        saved = (
            "MT19937",
            saved["keys"].numpy().astype(np.uint32),
            saved["pos"],
            saved["has_gauss"],
            saved["gauss"],
        )
    np.random.set_state(saved)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
