"""The data-prep job: index → Ray Data stages → shards → manifest.

Shards are fixed chunks of ``samples_per_shard`` consecutive valid index rows, so shard
names, contents and checksums depend only on the input and the config: a rerun writes the
same bytes. Each shard holds the chunk's rows that survive the stages.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import ray

from pipeline import __version__
from pipeline.config import to_dict
from pipeline.grounding import build_grounder
from pipeline.prep.config import PrepConfig
from pipeline.prep.records import Drop, index_format, read_index
from pipeline.prep.stages import GroundStage, TextStage, image_stage, write_shard_group
from pipeline.schema import SCHEMA_VERSION
from pipeline.shards import manifest as mf
from pipeline.shards import storage
from pipeline.text import CaptionParser

log = logging.getLogger(__name__)


def run(cfg: PrepConfig) -> mf.Manifest:
    """Run the whole job; returns the written manifest. Fails before any work on bad setup."""
    started = time.time()
    source = cfg.input.source or Path(storage.parent(cfg.input.index)).name
    root, name = cfg.output.rstrip("/"), cfg.name or Path(cfg.output.rstrip("/")).name
    _check_input(cfg.input.index)
    _prepare_output(root, cfg.existing_output)
    text_provenance = CaptionParser(cfg.text).provenance()  # fails fast on a missing spaCy model
    grounder_provenance = build_grounder(cfg.grounding).provenance()

    rows, drops = _assign_shards(cfg)
    log.info("index %s: %d records, %d dropped on read, %d shards",
             cfg.input.index, len(rows) + len(drops), len(drops), -(-len(rows) // cfg.samples_per_shard))

    shard_rows: list[dict] = []
    if rows:
        _init_ray(cfg.ray.address)
        for stats, shard_drops in _execute(cfg, rows, root, source):
            shard_rows.append(stats)
            drops.extend(shard_drops)
            _log_progress(shard_rows, len(rows), started)
    shard_rows.sort(key=lambda s: s["name"])
    _remove_leftover_temp_files(root)

    manifest = {
        "schema": SCHEMA_VERSION, "name": name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "input": {"index": cfg.input.index, "format": index_format(cfg.input.index), "source": source},
        "text": text_provenance, "grounder": grounder_provenance, "config": to_dict(cfg),
        "totals": _totals(shard_rows, drops),
        "shards": [{k: s[k] for k in ("name", "samples", "bytes", "sha256")} for s in shard_rows],
        "shard_stats": shard_rows,
    }
    drops.sort(key=lambda d: d["ordinal"])
    flat = [{k: v for k, v in s.items() if not k.endswith("_by_reason")} for s in shard_rows]
    mf.write_manifest(root, manifest, flat, drops)
    log.info("wrote %s in %.1f s", root, time.time() - started)
    return mf.load_manifest(root)


def _execute(cfg: PrepConfig, rows: list[dict], root: str, source: str):
    """Build the Ray Data pipeline and stream back one (stats, drops) per finished shard."""
    num_shards = rows[-1]["shard"] + 1
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(num_shards * 4, len(rows))))
    ds = ds.map_batches(image_stage, fn_kwargs={"cfg": cfg.image}, batch_format="numpy",
                        batch_size=cfg.ray.image_batch_size, num_cpus=cfg.ray.image_num_cpus)
    ds = ds.map_batches(TextStage, fn_constructor_args=(cfg.text,), batch_format="numpy",
                        batch_size=cfg.ray.text_batch_size, concurrency=cfg.ray.text_actors,
                        num_cpus=cfg.ray.text_num_cpus)
    ds = ds.map_batches(GroundStage, fn_constructor_args=(cfg.grounding, source), batch_format="numpy",
                        batch_size=cfg.ray.ground_batch_size, concurrency=cfg.ray.ground_actors,
                        num_cpus=cfg.ray.ground_num_cpus, num_gpus=cfg.ray.ground_num_gpus)
    ds = ds.groupby("shard").map_groups(write_shard_group, fn_kwargs={"root": root, "source": source},
                                        batch_format="numpy")
    for row in ds.iter_rows():
        yield json.loads(row["stats"]), json.loads(row["drops"])


def _assign_shards(cfg: PrepConfig) -> tuple[list[dict], list[dict]]:
    rows: list[dict] = []
    drops: list[dict] = []
    for item in read_index(cfg.input.index, cfg.max_caption_chars):
        if isinstance(item, Drop):
            drops.append({"ordinal": item.ordinal, "id": item.id, "reason": item.reason,
                          "detail": item.detail, "shard": None})
            continue
        rows.append({"shard": len(rows) // cfg.samples_per_shard, "ordinal": item.ordinal, "id": item.id,
                     "image": item.image, "caption": item.caption, "boxes": json.dumps(item.boxes),
                     "error": "", "detail": ""})
    return rows, drops


def _totals(shard_rows: list[dict], drops: list[dict]) -> dict:
    def summed(key: str) -> dict[str, int]:
        total = Counter()
        for s in shard_rows:
            total.update(s[key])
        return dict(sorted(total.items()))

    written = sum(s["samples"] for s in shard_rows)
    return {
        "inputs": written + len(drops), "written": written, "dropped": len(drops),
        "dropped_by_reason": dict(sorted(Counter(d["reason"] for d in drops).items())),
        "repaired_by_reason": summed("repaired_by_reason"),
        "boxes_dropped_by_reason": summed("boxes_dropped_by_reason"),
        **{k: sum(s[k] for s in shard_rows) for k in ("phrases", "regions", "linked_phrases", "ambiguous_phrases", "bytes")},
    }


def _check_input(index: str) -> None:
    index_format(index)
    if not storage.exists(index):
        raise FileNotFoundError(f"input.index: {index} does not exist")


def _prepare_output(root: str, existing: str) -> None:
    names = storage.list_names(root)
    if names and existing == "fail":
        raise FileExistsError(f"output: {root} is not empty; set existing_output=overwrite to replace it")
    for name in names:  # overwrite: remove what an earlier run wrote, nothing else
        if name.endswith(".tar") or name in (mf.MANIFEST_FILE, mf.SHARDS_TABLE, mf.DROPPED_TABLE) \
                or storage.is_temp_name(name):
            storage.remove(f"{root}/{name}")
    storage.make_dirs(root)


def _remove_leftover_temp_files(root: str) -> None:
    """A worker killed mid-write leaves its temporary file; the retry wrote a fresh one."""
    for name in storage.list_names(root):
        if storage.is_temp_name(name):
            storage.remove(f"{root}/{name}")


def _init_ray(address: str | None) -> None:
    """Join the cluster we were submitted to (RAY_ADDRESS), or start a local Ray."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False)


def _log_progress(done: list[dict], total_rows: int, started: float) -> None:
    rows_done = sum(s["inputs"] for s in done)
    elapsed = max(time.time() - started, 1e-9)
    rate = rows_done / elapsed
    eta = (total_rows - rows_done) / rate if rate else float("nan")
    log.info("shard %s done: %d/%d records (%.0f records/s, ETA %.0f s)",
             done[-1]["name"], rows_done, total_rows, rate, eta)


def code_version() -> str:
    """The git commit of this checkout when there is one, else the package version."""
    try:
        out = subprocess.run(["git", "-C", str(Path(__file__).parent), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        out = None
    commit = out.stdout.strip() if out and out.returncode == 0 else ""
    return f"pipeline {__version__}" + (f" ({commit})" if commit else "")
