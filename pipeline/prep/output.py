"""The output folder's lifecycle, in one place: checked and prepared before a job (refused, or
cleared of what an earlier run of ours wrote), a completion record per finished shard while the
job runs (what a rerun with ``existing_output=resume`` keeps), and those records cleared once
the manifest is written."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline import storage
from pipeline.config import BadInput, OutputInTheWay
from pipeline.shards import manifest as mf
from pipeline.shards.reader import file_digest
from pipeline.shards.stats import DropRow, ShardStats
from pipeline.shards.writer import is_shard_name

log = logging.getLogger(__name__)

PROGRESS_DIR = "_progress"  # per-shard completion records of a running job; removed when it ends
LOCK_FILE = "_prep.lock"  # the running job's lock (``lock.py``); removed when it ends
OUR_TABLES = (mf.MANIFEST_FILE, mf.SHARDS_TABLE, mf.DROPPED_TABLE, mf.SIZES_FILE)


@dataclass(frozen=True)
class ShardResult:
    """A written shard's stats and drops: also its completion record, with the job's run id."""

    stats: ShardStats
    drops: list[DropRow]

    @classmethod
    def from_json(cls, record: dict) -> ShardResult:
        return cls(ShardStats(**record["stats"]), [DropRow(**d) for d in record["drops"]])


def write_record(root: str, run_id: str, result: ShardResult) -> None:
    """A shard's completion record, written once its tar is whole: what a resumed run needs to
    account for the shard without redoing it."""
    record = {"run_id": run_id, **dataclasses.asdict(result)}
    url = f"{root}/{PROGRESS_DIR}/{result.stats.name}.json"
    storage.write_atomic(url, json.dumps(record, ensure_ascii=False).encode())


def refuse_over_input(root: str, input_urls: list[str]) -> None:
    """An output folder that is the filesystem's root or holds the input is refused: a rerun
    with ``overwrite`` or ``resume`` works in that folder."""
    if not storage.is_s3(root) and storage.local_path(root).resolve() == Path("/").resolve():
        raise BadInput(f"output: {root} is the filesystem's root; name a folder for the dataset")
    for url in input_urls:
        if _is_within(url, root):
            raise BadInput(f"output: {root} holds the input {url}; write the dataset to another folder")


def _is_within(url: str, folder: str) -> bool:
    if storage.is_s3(url) != storage.is_s3(folder):
        return False
    if storage.is_s3(url):
        return url.rstrip("/").startswith(folder.rstrip("/") + "/") or url.rstrip("/") == folder.rstrip("/")
    return storage.local_path(url).resolve().is_relative_to(storage.local_path(folder).resolve())


def prepare(root: str, existing: str) -> None:
    """With ``overwrite``, remove what an earlier run of ours wrote in ``root`` (the files its
    manifest and completion records name), nothing else."""
    names = [name for name in storage.list_names(root) if name != LOCK_FILE]  # our own lock
    if names and existing == "fail":
        raise OutputInTheWay(
            f"output: {root} is not empty; set existing_output=overwrite to replace it, "
            "or resume to finish a killed run of this job"
        )
    if existing == "overwrite":
        for name in sorted(_written_by_us(root, names)):
            storage.remove(f"{root}/{name}")
        clear_progress(root)
    storage.make_dirs(root)


def _written_by_us(root: str, names: list[str]) -> set[str]:
    """The files in ``root`` an earlier run of this pipeline wrote: its manifest, tables and the
    shards they name, shards with a completion record, and writers' temporary files of those."""
    ours = set(OUR_TABLES)
    if mf.MANIFEST_FILE in names:
        ours |= {shard.name for shard in mf.load_manifest(root).shards}  # refuses a manifest not ours
    ours |= {result.stats.name for _, result in _progress_records(root)}
    return {name for name in names if name in ours or _is_our_temp(name)}


def _is_our_temp(name: str) -> bool:
    """A temporary file one of our writers left, killed while writing a shard or a table."""
    target = storage.temp_target(name)
    return is_shard_name(target) or target in OUR_TABLES


def finished_earlier(root: str, run_id: str) -> mf.Manifest:
    """The dataset in ``root``, written by an earlier run of this job (else refused)."""
    manifest = mf.load_manifest(root)
    if manifest.data.get("run_id") != run_id:
        raise OutputInTheWay(
            f"output: {root} holds a finished dataset of a different job; "
            "set existing_output=overwrite to replace it"
        )
    log.info("%s: this job already finished; nothing to do", root)
    clear_progress(root)
    return manifest


def completed_shards(root: str, run_id: str) -> dict[str, ShardResult]:
    """Completion records of an earlier run of this job whose shard is intact (size + sha256)."""
    done = {}
    for record_run, result in _progress_records(root):
        if record_run != run_id:
            raise OutputInTheWay(
                f"output: {root} holds shards of a different job (input or config changed); "
                "set existing_output=overwrite to replace them"
            )
        stats = result.stats
        url = f"{root}/{stats.name}"
        if storage.exists(url) and file_digest(url) == (stats.bytes, stats.sha256):
            done[stats.name] = result
        else:
            log.warning("%s does not match its completion record: writing it again", url)
    return done


def _progress_records(root: str) -> Iterator[tuple[str, ShardResult]]:
    """The completion records in ``root`` (run id, result); one that is not ours in shape
    (unreadable, a shard name that is not a plain file name) is ignored with a warning: its
    shard is written again."""
    for record_name in storage.list_names(f"{root}/{PROGRESS_DIR}"):
        url = f"{root}/{PROGRESS_DIR}/{record_name}"
        try:
            record = json.loads(storage.read_bytes(url))
            result = ShardResult.from_json(record)
            if is_shard_name(result.stats.name) and isinstance(record["run_id"], str):
                yield record["run_id"], result
                continue
        except (ValueError, KeyError, TypeError):
            pass
        log.warning("%s is not a completion record of this pipeline: ignored", url)


def remove_leftover_temp_files(root: str) -> None:
    """A worker killed mid-write leaves its temporary file; the retry wrote a fresh one."""
    for name in storage.list_names(root):
        if _is_our_temp(name):
            storage.remove(f"{root}/{name}")


def clear_progress(root: str) -> None:
    """The completion records gone: once the manifest is written, they are no longer needed."""
    for name in storage.list_names(f"{root}/{PROGRESS_DIR}"):
        storage.remove(f"{root}/{PROGRESS_DIR}/{name}")
    storage.remove_empty_dir(f"{root}/{PROGRESS_DIR}")
