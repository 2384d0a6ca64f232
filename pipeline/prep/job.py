"""The data-prep job: input (``input.format``) → Ray Data stages → shards → manifest.

Shards are fixed chunks of ``samples_per_shard`` consecutive valid input records, so shard
names, contents and checksums depend only on the input and the config: a rerun writes the
same bytes. Each shard holds the chunk's records that survive the stages.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path

import ray

from pipeline import __version__
from pipeline.config import to_dict
from pipeline.grounding import build_grounder
from pipeline.lineage import code_version
from pipeline.prep import inputs
from pipeline.prep.config import PrepConfig
from pipeline.prep.records import Drop
from pipeline.prep.stages import PROGRESS_DIR, GroundStage, TextStage, image_stage, write_shard_group
from pipeline.schema import SCHEMA_VERSION
from pipeline.shards import manifest as mf
from pipeline.shards import storage
from pipeline.shards.writer import file_digest, shard_name
from pipeline.text import CaptionParser

log = logging.getLogger(__name__)

CHAOS_DRIVER_ENV = "PIPELINE_CHAOS_KILL_DRIVER_AFTER"


def run(cfg: PrepConfig) -> mf.Manifest:
    """Run the whole job; returns the written manifest. Fails before any work on bad setup."""
    started = time.time()
    files = inputs.locate(cfg.input)
    source = cfg.input.source or inputs.default_source(cfg.input, files)
    root, name = cfg.output.rstrip("/"), cfg.name or Path(cfg.output.rstrip("/")).name
    run_id = _run_id(cfg, files)
    if cfg.existing_output == "resume" and storage.exists(f"{root}/{mf.MANIFEST_FILE}"):
        return _finished_earlier(root, run_id)
    _prepare_output(root, cfg.existing_output)
    text_provenance = CaptionParser(cfg.text).provenance()  # fails fast on a missing spaCy model
    grounder_provenance = build_grounder(cfg.grounding).provenance()

    rows, drops = _assign_shards(cfg, files)
    log.info("input (%s): %d records, %d dropped on read, %d shards", cfg.input.format,
             len(rows) + len(drops), len(drops), -(-len(rows) // cfg.samples_per_shard))
    done = _completed_shards(root, run_id) if cfg.existing_output == "resume" else {}
    if done:
        log.info("resuming: %d shards of an earlier run of this job are complete and verified", len(done))
        rows = [r for r in rows if shard_name(r["shard"]) not in done]
    shard_rows = [record["stats"] for record in done.values()]
    drops += [d for record in done.values() for d in record["drops"]]

    if rows:
        _init_ray(cfg.ray.address)
        total_rows = len(rows) + sum(s["inputs"] for s in shard_rows)
        for stats, shard_drops in _execute(cfg, rows, root, source, run_id):
            shard_rows.append(stats)
            drops.extend(shard_drops)
            _log_progress(shard_rows, total_rows, started)
            _maybe_die(len(shard_rows))
    shard_rows.sort(key=lambda s: s["name"])
    _remove_leftover_temp_files(root)

    manifest = {
        "schema": SCHEMA_VERSION, "name": name, "run_id": run_id,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "input": {**inputs.describe(cfg.input, files), "source": source},
        "text": text_provenance, "grounder": grounder_provenance, "config": to_dict(cfg),
        "totals": _totals(shard_rows, drops),
        "shards": [{k: s[k] for k in ("name", "samples", "bytes", "sha256")} for s in shard_rows],
        "shard_stats": shard_rows,
    }
    drops.sort(key=lambda d: d["ordinal"])
    flat = [{k: v for k, v in s.items() if not k.endswith("_by_reason")} for s in shard_rows]
    mf.write_manifest(root, manifest, flat, drops)
    _clear_progress(root)
    log.info("wrote %s in %.1f s", root, time.time() - started)
    return mf.load_manifest(root)


def _execute(cfg: PrepConfig, rows: list[dict], root: str, source: str, run_id: str):
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
                        num_cpus=cfg.ray.ground_num_cpus,
                        num_gpus=ground_num_gpus(cfg, ray.cluster_resources().get("GPU", 0)))
    ds = ds.groupby("shard").map_groups(write_shard_group, fn_kwargs={"root": root, "source": source, "run_id": run_id},
                                        batch_format="numpy")
    for row in ds.iter_rows():
        yield json.loads(row["stats"]), json.loads(row["drops"])


def ground_num_gpus(cfg: PrepConfig, cluster_gpus: float) -> float:
    """GPUs per grounding actor: as configured, else one for the detector when the cluster has any."""
    if cfg.ray.ground_num_gpus is not None:
        return cfg.ray.ground_num_gpus
    return 1.0 if cfg.grounding.name == "detector" and cluster_gpus > 0 else 0.0


def _assign_shards(cfg: PrepConfig, files: inputs.InputFiles) -> tuple[list[dict], list[dict]]:
    rows: list[dict] = []
    drops: list[dict] = []
    for item in inputs.read_input(cfg.input, files, cfg.max_caption_chars, cfg.text.max_sentences):
        if isinstance(item, Drop):
            drops.append({"ordinal": item.ordinal, "id": item.id, "reason": item.reason,
                          "detail": item.detail, "shard": None})
            continue
        rows.append({"shard": len(rows) // cfg.samples_per_shard, "ordinal": item.ordinal, "id": item.id,
                     "image": item.image, "image_offset": item.image_offset, "image_size": item.image_size,
                     "caption": item.caption, "boxes": json.dumps(item.boxes),
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


def _prepare_output(root: str, existing: str) -> None:
    names = storage.list_names(root)
    if names and existing == "fail":
        raise FileExistsError(f"output: {root} is not empty; set existing_output=overwrite to replace it, "
                              "or resume to finish a killed run of this job")
    if existing == "overwrite":  # remove what an earlier run wrote, nothing else
        for name in names:
            if name.endswith(".tar") or name in (mf.MANIFEST_FILE, mf.SHARDS_TABLE, mf.DROPPED_TABLE) \
                    or storage.is_temp_name(name):
                storage.remove(f"{root}/{name}")
        _clear_progress(root)
    storage.make_dirs(root)


def _run_id(cfg: PrepConfig, files: inputs.InputFiles) -> str:
    """What makes two runs the same job: the input files (``inputs`` says how each is identified)
    and every config value that shapes the output's content (not where it goes, not
    ``existing_output``, not the Ray resources)."""
    config = {k: v for k, v in to_dict(cfg).items() if k not in ("output", "existing_output", "ray")}
    key = json.dumps({"config": config, "input": inputs.identity(files), "version": __version__}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _completed_shards(root: str, run_id: str) -> dict[str, dict]:
    """Completion records of an earlier run of this job whose shard is intact (size + sha256)."""
    done = {}
    for record_name in storage.list_names(f"{root}/{PROGRESS_DIR}"):
        record = json.loads(storage.read_bytes(f"{root}/{PROGRESS_DIR}/{record_name}"))
        if record["run_id"] != run_id:
            raise FileExistsError(f"output: {root} holds shards of a different job (input or config changed); "
                                  "set existing_output=overwrite to replace them")
        stats = record["stats"]
        url = f"{root}/{stats['name']}"
        if storage.exists(url) and file_digest(url) == (stats["bytes"], stats["sha256"]):
            done[stats["name"]] = record
        else:
            log.warning("%s does not match its completion record: writing it again", url)
    return done


def _finished_earlier(root: str, run_id: str) -> mf.Manifest:
    manifest = mf.load_manifest(root)
    if manifest.data.get("run_id") != run_id:
        raise FileExistsError(f"output: {root} holds a finished dataset of a different job; "
                              "set existing_output=overwrite to replace it")
    log.info("%s: this job already finished; nothing to do", root)
    _clear_progress(root)
    return manifest


def _clear_progress(root: str) -> None:
    for name in storage.list_names(f"{root}/{PROGRESS_DIR}"):
        storage.remove(f"{root}/{PROGRESS_DIR}/{name}")
    storage.remove_empty_dir(f"{root}/{PROGRESS_DIR}")


def _maybe_die(shards_done: int) -> None:
    """Fault injection (``PIPELINE_CHAOS_KILL_DRIVER_AFTER=n``): the driver dies abruptly once n
    shards are done, as a killed driver or a lost head node would."""
    limit = os.environ.get(CHAOS_DRIVER_ENV)
    if limit and shards_done >= int(limit):
        log.warning("chaos: killing the driver after %d shards", shards_done)
        os._exit(1)


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
