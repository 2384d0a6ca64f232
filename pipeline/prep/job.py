"""The data-prep job: input (``input.format``) → a pool of shard workers → shards → manifest.

The driver streams the input and cuts it into shards: fixed chunks of ``samples_per_shard``
consecutive valid input records, so shard names, contents and checksums depend only on the
input and the config, and a rerun writes the same bytes. Each chunk goes to a worker
(``worker.py``) as soon as one is free, and the worker writes it as one tar of the records that
survive the stages. Shards therefore land in a steady stream from the start of the run, and
the driver holds the records of the shards in flight, not the input (docs/data_prep.md says
what it holds, per shard and per record).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import resource
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import ray

from pipeline import __version__, storage
from pipeline.config import JobIncomplete, to_dict
from pipeline.prep import dedup, inputs, lock, output, tars
from pipeline.prep.config import PrepConfig, RayConfig
from pipeline.prep.pool import WorkerPool
from pipeline.prep.records import Drop, InputRecord, keep_memory_returnable
from pipeline.prep.worker import ShardTask
from pipeline.shards import manifest as mf
from pipeline.shards.dataset import Header, write_dataset
from pipeline.shards.stats import DropRow, ShardStats
from pipeline.shards.writer import shard_name

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; kill, Slurm's scancel, a preemption


def run(cfg: PrepConfig) -> mf.Manifest:
    """Run the whole job; returns the written manifest. Fails before any work on bad setup, and
    before touching the output while another job holds its lock (``lock.py``). SIGINT or SIGTERM
    stops it as :class:`Interrupted`: its workers stopped, its lock released."""
    started = time.time()
    with _signals_interrupt():
        files = inputs.locate(cfg.input)
        source = cfg.input.source or inputs.default_source(cfg.input, files)
        root = cfg.output.rstrip("/") or "/"  # "/" is refused below, not read as ""
        output.refuse_over_input(root, inputs.urls(cfg.input, files))
        run_id = _run_id(cfg, files)
        try:
            with lock.held(f"{root}/{output.LOCK_FILE}", run_id) as held:
                return _run(cfg, root, files, source, run_id, held, started)
        except OSError as e:  # before any shard: the lock, the output folder
            if not storage.is_disk_full(e):
                raise
            raise JobIncomplete(
                f"{root}: {e.strerror} before any shard was written; free space, then rerun"
            ) from None


def _run(
    cfg: PrepConfig,
    root: str,
    files: inputs.InputFiles,
    source: str,
    run_id: str,
    held: lock.Lock,
    started: float,
) -> mf.Manifest:
    if cfg.existing_output == "resume" and storage.exists(f"{root}/{mf.MANIFEST_FILE}"):
        return output.finished_earlier(root, run_id)
    output.prepare(root, cfg.existing_output)
    done = output.completed_shards(root, run_id) if cfg.existing_output == "resume" else {}
    if done:
        log.info("resuming: %d shards of an earlier run of this job are complete and verified", len(done))

    planner = ShardPlanner(cfg.samples_per_shard, skip=set(done))
    shard_rows = [result.stats for result in done.values()]
    drops = [d for result in done.values() for d in result.drops]
    total = inputs.count(cfg.input)
    try:
        pool, provenance = _start_workers(cfg, root, source, run_id)
        items = inputs.read_input(
            cfg.input,
            files,
            cfg.max_caption_chars,
            cfg.text.max_sentences,
            cfg.image.max_boxes,
            list_tars=_list_tars_on_ray,
            id_sets=_id_sets(cfg.ray),
        )
        resumed = sum(result.stats.inputs for result in done.values())
        progress = Progress(total, resumed)
        try:
            with contextlib.closing(pool.map(planner.tasks(items))) as results:  # closed: workers stopped
                for result in results:
                    shard_rows.append(result.stats)
                    drops.extend(result.drops)
                    progress.shard_done(result.stats, planner)
        except JobIncomplete as e:
            raise JobIncomplete(
                f"{_complete(shard_rows, planner)} ({e}); rerun with existing_output=resume to finish"
            ) from None
        drops += planner.read_drops
        log.info("input (%s): %s", cfg.input.format, planner.summary())
        header = Header(
            name=cfg.name or Path(root).name,
            run_id=run_id,
            input={**inputs.describe(cfg.input, files), "source": source},
            text=provenance["text"],
            grounder=provenance["grounder"],
            config=to_dict(cfg),
        )
        held.check()
        _write_manifest(root, header, shard_rows, drops)
    except KeyboardInterrupt as e:  # Ray may have made the Interrupted bare: the signal is put back below
        status = f"{_complete(shard_rows, planner)}; rerun with existing_output=resume"
        raise Interrupted(getattr(e, "signum", signal.SIGINT), status) from None
    except OSError as e:
        if not storage.is_disk_full(e):
            raise
        raise JobIncomplete(_no_space(e, root, shard_rows, planner, total)) from None
    log.info(
        "wrote %s in %.1f s; driver peak RSS %d MB; object store: %s",
        root,
        time.time() - started,
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        _object_store_stats(),
    )
    return mf.load_manifest(root)


def _complete(shard_rows: list[ShardStats], planner: ShardPlanner) -> str:
    """How many shards are complete, of how many once the whole input is read."""
    of = f" of {planner.shards}" if planner.exhausted else ""
    return f"{len(shard_rows)}{of} shards complete"


def _no_space(
    error: OSError, root: str, shard_rows: list[ShardStats], planner: ShardPlanner, total: int | None
) -> str:
    """The one line of a job stopped by a full disk (or quota): what is complete, how much space
    is left, and about how much the rest needs at the bytes per input record so far."""
    free = storage.free_bytes(root)
    where = f"{root}: {error.strerror}" + ("" if free is None else f" ({_megabytes(free)} free)")
    inputs_done = sum(s.inputs for s in shard_rows)
    total = planner.records_read if total is None and planner.exhausted else total
    if total is None or not inputs_done:
        needs = "the space the rest needs is known once a shard is complete and the input counted"
    else:
        left = total - inputs_done - len(planner.read_drops)
        per_record = sum(s.bytes for s in shard_rows) / inputs_done
        needs = f"the other {left} records need about {_megabytes(per_record * left)}"
    rerun = "free space, then rerun with existing_output=resume"
    return f"{_complete(shard_rows, planner)}; {where}; {needs}; {rerun}"


def _megabytes(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the job (``signum``); the message says what is complete and how
    a rerun finishes. A ``KeyboardInterrupt``, so no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int, message: str = "before any shard was written; rerun the same command"):
        super().__init__(message)
        self.signum = signum


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the driver for the block (once: a signal
    while the job stops is logged, not raised into its cleanup); then the handlers it found.
    What a handler raises inside ``ray.wait``/``ray.get`` comes out as a bare KeyboardInterrupt
    (Ray's core worker checks signals and raises its own), so the signal received is recorded
    here and the block's interruption leaves as :class:`Interrupted` with that signal."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    stopping = []

    def stop(signum: int, _frame) -> None:
        if stopping:
            log.warning("%s: the job is stopping already", signal.Signals(signum).name)
            return
        stopping.append(signum)
        raise Interrupted(signum)

    before = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        yield
    except KeyboardInterrupt as e:
        if not stopping:  # raised by other code: not a signal of ours
            raise
        raise Interrupted(stopping[0], *e.args[:1]) from None
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _start_workers(cfg: PrepConfig, root: str, source: str, run_id: str) -> tuple[WorkerPool, dict]:
    """Ray joined or started, and the worker pool with its provenance: asking for it fails fast
    on a missing spaCy model or a detector that does not load."""
    _init_ray(cfg.ray.address)
    keep_memory_returnable()  # the duplicate-id set grows with the input
    pool = WorkerPool(cfg, root, source, run_id)
    try:
        provenance = pool.provenance()
    except BaseException:  # a signal, workers that cannot start: none left running
        pool.shutdown()
        raise
    text = provenance["text"]
    log.info(
        "text: spaCy model %s %s (not loadable: %s)",
        text["model"],
        text["model_version"],
        text["models_not_loadable"] or "none",
    )
    return pool, provenance


def _write_manifest(root: str, header: Header, shard_rows: list[ShardStats], drops: list[DropRow]) -> None:
    """The manifest and its tables, written last: a dataset is complete once ``dataset.json`` is
    there. Then the completion records of the run, no longer needed, go."""
    output.remove_leftover_temp_files(root)
    write_dataset(root, header, shard_rows, drops)
    output.clear_progress(root)


class ShardPlanner:
    """Cuts the input stream into :class:`ShardTask` s as it is read, holding one chunk. Drops on
    read are kept for ``dropped.parquet``; shards in ``skip`` (done by a killed run) are read,
    since their records count for the ordinals and the duplicate ids, but not handed out."""

    def __init__(self, samples_per_shard: int, skip: set[str]):
        self.samples_per_shard, self.skip = samples_per_shard, skip
        self.read_drops: list[DropRow] = []
        self.records_read = 0  # inputs read so far, valid or not
        self.shards = 0  # shards cut so far
        self.exhausted = False  # the whole input is read: records_read is the total

    def summary(self) -> str:
        return f"{self.records_read} records, {len(self.read_drops)} dropped on read, {self.shards} shards"

    def tasks(self, items: Iterable[InputRecord | Drop]) -> Iterator[ShardTask]:
        chunk: list[InputRecord] = []
        for item in items:
            self.records_read += 1
            if isinstance(item, Drop):
                self.read_drops.append(DropRow.of(item, None))
                continue
            chunk.append(item)
            if len(chunk) == self.samples_per_shard:
                yield from self._cut(chunk)
                chunk = []
        self.exhausted = True
        if chunk:
            yield from self._cut(chunk)

    def _cut(self, chunk: list[InputRecord]) -> Iterator[ShardTask]:
        index, self.shards = self.shards, self.shards + 1
        if shard_name(index) not in self.skip:
            yield ShardTask(index, chunk)


def _list_tars_on_ray(tar_files: list[tars.Tar]) -> Iterator[tars.TarListing]:
    """Tar listings (I/O: headers, captions) as Ray tasks anywhere in the cluster, in order,
    ``tars.LISTING_THREADS`` at a time; they take no CPU slot from the workers."""
    list_tar = ray.remote(num_cpus=0)(tars.list_tar)
    window: deque[ray.ObjectRef] = deque()
    for tar in tar_files:
        window.append(list_tar.remote(tar))
        if len(window) >= tars.LISTING_THREADS:
            yield ray.get(window.popleft())
    while window:
        yield ray.get(window.popleft())


class Progress:
    """The job's progress line: records done (in finished shards, or dropped on read) of the
    total, the rate since the workers started, and the time left at that rate."""

    def __init__(self, total: int | None, resumed: int):
        self.total, self.resumed, self.done = total, resumed, 0
        self.started = time.time()

    def shard_done(self, stats: ShardStats, planner: ShardPlanner) -> None:
        self.done += stats.inputs
        done = self.done + len(planner.read_drops)
        total = self.total if self.total is not None else planner.records_read if planner.exhausted else None
        rate = done / max(time.time() - self.started, 1e-9)
        if total is None:
            count = f"{done} records (the total is known once the input is read)"
        else:
            total -= self.resumed
            eta = (total - done) / max(rate, 1e-9)
            count = f"{done}/{total} records ({done / max(total, 1):.0%}), ETA {eta:.0f} s"
        log.info("%s written on %s: %s, %.0f records/s", stats.name, stats.node, count, rate)


def _run_id(cfg: PrepConfig, files: inputs.InputFiles) -> str:
    """What makes two runs the same job: the input files (``inputs`` says how each is identified)
    and every config value that shapes the output's content (not where it goes, not
    ``existing_output``, not the Ray resources)."""
    config = {k: v for k, v in to_dict(cfg).items() if k not in ("output", "existing_output", "ray")}
    key = json.dumps(
        {"config": config, "input": inputs.identity(files), "version": __version__}, sort_keys=True
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _object_store_stats() -> str:
    """Ray's ``ray memory --stats-only`` totals: a job that spills objects to disk needs retuning.
    Best effort: it asks every node, and a node lost in the job may not answer; the dataset is
    complete by then."""
    try:
        from ray._private.internal_api import memory_summary  # Ray's CLI reads it this way too

        summary = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    except Exception as e:  # noqa: BLE001 - a private API, a node that is gone: a log line, not a failure
        return f"unavailable ({type(e).__name__})"
    lines = [line.strip() for line in summary.splitlines()]
    return "; ".join(line for line in lines if line and not line.startswith("---"))


def _id_sets(cfg: RayConfig) -> dedup.IdSets:
    if cfg.dedup == "distributed":
        return dedup.on_the_cluster(cfg.dedup_parts, cfg.worker_timeout_s)
    return dedup.in_driver


def _init_ray(address: str | None) -> None:
    """Join the cluster we were submitted to (RAY_ADDRESS), or start a local Ray."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    if address:
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False)
    if threading.current_thread() is threading.main_thread():  # ray.init puts in its SIGTERM handler
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
