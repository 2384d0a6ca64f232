"""The pool of shard workers: hands out shards as workers free up, and survives the cluster.

Failures are counted per shard, never per worker or per job:

- A worker that dies (killed, out of memory, a native crash, its node gone) is removed; the
  shards it held go back to the queue and run on a live worker. The death counts against the
  one it was running (calls run in the order sent), not those queued behind it: a poison
  record must not use up the attempts of the shards that waited at its worker. Ray restarts
  nothing (``max_restarts=0``): a restarting actor whose node is gone waits for resources
  forever.
- A worker that does not answer a heartbeat for ``ray.worker_timeout_s`` (a frozen process, a
  node cut off from the network) is killed, which is a death as above: a shard in flight on a
  vanished node is back in the queue within that time, whatever Ray's own health checks say.
- The pool's size follows the cluster: every heartbeat it starts workers up to what the
  cluster's resources hold (``pool_size``), so a node that joins mid-job gets workers, and a
  lost node's workers are replaced where resources exist. A worker takes shards once it has
  started; one that cannot be placed holds none.
- A shard whose worker dies on it ``ray.shard_attempts`` times is probed: parts of it run
  through the stages (nothing written), halved until each record that kills its worker is
  found, twice alone. Those records become ``worker_crashed`` drops; the shard is then written
  without them, so every other record lands exactly as in a run without the poison.
- A shard that still cannot be written (its write raises, or dies after probing) is given up
  while the job goes on; the job then ends with :class:`JobIncomplete`, which says how many
  shards are complete and that a rerun with ``existing_output=resume`` finishes the rest.
- A shard that runs past its deadline (``ray.shard_deadline_factor`` × the median time of the
  job's shards so far, and at least ``ray.shard_deadline_floor_s``) on a worker that still answers
  its heartbeat (a storage read that never returns, a pathological record) is a straggler: a copy
  starts on another worker, its worker takes no more work, and the first copy to finish wins (both
  write the same bytes); the workers of the other copies are killed, their calls go back uncharged.
  When ``ray.shard_attempts`` copies have all run past their deadlines, the shard is given up.
- A write refused for space (``storage.is_disk_full``: a full disk, a quota) is a condition of
  the output, not of its shard: no shard is started after it, the calls in flight finish, and
  the pool raises that error for the job to name the path and the space the rest needs.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import ray

from pipeline import storage
from pipeline.config import JobIncomplete, UserError
from pipeline.prep.config import PrepConfig
from pipeline.prep.output import ShardResult
from pipeline.prep.records import Drop, InputRecord
from pipeline.prep.worker import ShardTask, ShardWorker

log = logging.getLogger(__name__)

TASKS_PER_WORKER = 2  # shards queued at a worker: the next one is there when it finishes one
HEARTBEAT_S = 2.0  # how often the pool pings its workers and looks at the cluster's size
CONFIRMATIONS = 2  # deaths of a worker on one record alone that make it a poison record
TIMED_SHARDS = 1000  # the latest shard times the deadline is learned from


@dataclass
class Shard:
    """One shard's attempts: deaths of its workers, and the probing of its records."""

    task: ShardTask
    deaths: int = 0
    errors: int = 0
    probed: bool = False  # its records were probed; the next deaths give the shard up
    probes: int = 0  # probes queued or in flight
    crashed: list[Drop] = field(default_factory=list)
    late: int = 0  # copies of its write that ran past their deadline
    settled: bool = False  # written, or given up: any other copy of it is moot


@dataclass
class Work:
    """One call for a worker: write a shard, or probe a part of its records."""

    shard: Shard
    part: list[InputRecord] | None = None  # None: write the shard
    deaths: int = 0  # deaths on this part alone (a single record's confirmations)
    late: bool = False  # ran past its deadline: a copy was started elsewhere

    def describe(self) -> str:
        name = f"shard {self.shard.task.index}"
        return name if self.part is None else f"{len(self.part)} records of {name}"


@dataclass
class Worker:
    handle: ray.actor.ActorHandle
    node: str = "?"
    calls: deque[ray.ObjectRef] = field(default_factory=deque)  # in the order sent: the first runs
    since: float = 0.0  # when the call it is running started (calls run in the order sent)
    stuck: bool = False  # its call ran past the deadline: it gets no more work
    ping: ray.ObjectRef | None = None
    ping_sent: float = 0.0


class WorkerPool:
    """:class:`ShardWorker` actors, each with at most ``TASKS_PER_WORKER`` calls queued, so the
    driver reads the input only as fast as the workers take it."""

    def __init__(self, cfg: PrepConfig, root: str, source: str, run_id: str):
        self.cfg = cfg
        self.gpus = worker_num_gpus(cfg, ray.cluster_resources().get("GPU", 0))
        self.actor = ray.remote(concurrency_groups={"heartbeat": 1})(ShardWorker).options(
            num_cpus=cfg.ray.worker_num_cpus, num_gpus=self.gpus, max_restarts=0, max_task_retries=0
        )
        self.args = (cfg, root, source, run_id)
        self.starting: dict[ray.ObjectRef, Worker] = {}  # started, not yet placed and loaded
        self.live: list[Worker] = []
        self.running: dict[ray.ObjectRef, tuple[Worker, Work]] = {}
        self.queue: deque[Work] = deque()  # retries and probes: before any new shard
        self.pings: dict[ray.ObjectRef, Worker] = {}
        self.failed: list[int] = []  # shards given up in this run
        self.disk_full: OSError | None = None  # the first write refused for space: start no more
        self.times: deque[float] = deque(maxlen=TIMED_SHARDS)  # seconds the shards written took
        self.exhausted = False  # the input has no more shards
        self.nodes: set[str] = set()
        self.last_beat = 0.0
        self.alone_since = time.monotonic()  # since when no worker is live
        self._resize()
        log.info("%d workers (%g CPU, %g GPU each)", len(self.starting), cfg.ray.worker_num_cpus, self.gpus)

    def provenance(self) -> dict:
        """What the workers' text and grounding stages are; fails fast when they cannot start
        (a missing spaCy model, a detector that does not load)."""
        ref, worker = next(iter(self.starting.items()))
        try:
            provenance = ray.get(worker.handle.provenance.remote())
        except ray.exceptions.RayActorError as e:
            raise UserError(f"data-prep workers cannot start: {_cause(e)}") from None
        self._placed(ref)
        return provenance

    def map(self, tasks: Iterator[ShardTask]) -> Iterator[ShardResult]:
        """Each shard's result, in the order they finish; then :class:`JobIncomplete` if a shard
        was given up; or the first write refused for space, once the calls in flight are done."""
        try:
            while True:
                if not self.disk_full:
                    self._dispatch(tasks)
                if not self.running and (self.disk_full or (self.exhausted and not self.queue)):
                    break
                for ref in self._wait():
                    yield from self._settle(ref)
                self._heartbeat()
        finally:
            self.shutdown()
        if self.disk_full:
            raise self.disk_full
        if self.failed:
            raise JobIncomplete("could not write shard " + ", ".join(map(str, sorted(self.failed))))

    def _wait(self) -> list[ray.ObjectRef]:
        """What came back (a result, a started worker, a heartbeat), waiting a heartbeat at most."""
        refs = [*self.running, *self.starting, *self.pings]
        if not refs:
            time.sleep(HEARTBEAT_S)
            return []
        if not ray.wait(refs, num_returns=1, timeout=HEARTBEAT_S)[0]:
            return []
        return ray.wait(refs, num_returns=len(refs), timeout=0)[0]  # all that are ready by now

    def shutdown(self) -> None:
        for worker in [*self.live, *self.starting.values()]:
            ray.kill(worker.handle, no_restart=True)
        self.live, self.starting = [], {}

    # The queue: retries and probes first, then the input's next shard.

    def _dispatch(self, tasks: Iterator[ShardTask]) -> None:
        """Calls to the workers with room, the emptiest first (a scan, no sort of the whole pool:
        at 1,000 workers it runs on every wake-up; benchmarks/bench_pool.py)."""
        free = [w for w in self.live if len(w.calls) < TASKS_PER_WORKER and not w.stuck]
        for worker in sorted(free, key=lambda w: len(w.calls)) if len(free) > 1 else free:
            while len(worker.calls) < TASKS_PER_WORKER:
                work = self._queued() or self._next(tasks)
                if work is None:
                    return
                call = worker.handle.process if work.part is None else worker.handle.probe
                ref = call.remote(work.shard.task if work.part is None else work.part)
                self.running[ref] = (worker, work)
                if not worker.calls:
                    worker.since = time.monotonic()
                worker.calls.append(ref)

    def _queued(self) -> Work | None:
        """The first queued call whose shard is still open (a straggler's copy may have won)."""
        while self.queue:
            work = self.queue.popleft()
            if not work.shard.settled:
                return work
        return None

    def _next(self, tasks: Iterator[ShardTask]) -> Work | None:
        task = None if self.exhausted else next(tasks, None)
        self.exhausted = task is None
        return None if task is None else Work(Shard(task))

    # Results, deaths and errors.

    def _settle(self, ref: ray.ObjectRef) -> Iterator[ShardResult]:
        if ref in self.starting:
            self._placed(ref)
            return
        if ref in self.pings:
            self._answered(ref)
            return
        if ref not in self.running:  # a call of a worker already given up for lost
            return
        worker, work = self.running[ref]
        try:
            result = ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # our code raised: the worker lives on
            self._done(ref)
            if storage.is_disk_full(e.cause):
                self._no_space(work, e.cause)
            else:
                self._errored(work, e)
            return
        except ray.exceptions.RayError as e:  # the worker died, or its node went away
            self._lost(worker, type(e).__name__)
            return
        started = self._done(ref)
        if work.part is not None:
            self._probe_passed(work)
            return
        if work.shard.settled:  # a copy of a straggler that finished second: the same bytes
            return
        work.shard.settled = True
        self.times.append(time.monotonic() - started)
        if work.shard.crashed:
            log.warning("%s written without %d poison records", result.stats.name, len(work.shard.crashed))
        self._stop_copies(work.shard)
        yield result

    def _done(self, ref: ray.ObjectRef) -> float:
        """The call is off its worker, whose next call starts now; when this one started."""
        worker, _ = self.running.pop(ref)
        worker.calls.remove(ref)  # the first: calls end in the order sent
        worker.stuck = False  # a late call that ends after all frees its worker
        started, worker.since = worker.since, time.monotonic()
        return started

    def _stop_copies(self, shard: Shard) -> None:
        """The workers running a copy of a settled shard are stuck on it: killed, their other
        calls back to the queue, nothing charged. (A copy still queued at a worker runs, and its
        result is ignored.) Only a late shard has copies: the scan of the pool is for those."""
        if not shard.late:
            return
        for worker in list(self.live):
            work = self._head(worker)
            if work is not None and work.shard is shard and work.part is None:
                self._lost(worker, f"its copy of shard {shard.task.index} is no longer needed", charged=False)

    def _placed(self, ref: ray.ObjectRef) -> None:
        worker = self.starting.pop(ref)
        try:
            worker.node = ray.get(ref)
        except ray.exceptions.RayError as e:
            log.warning("a worker could not start: %s", _cause(e))
            return
        if worker.node not in self.nodes and self.nodes:
            log.info("node %s joined: a worker started there", worker.node)
        self.nodes.add(worker.node)
        self.live.append(worker)

    def _answered(self, ref: ray.ObjectRef) -> None:
        worker = self.pings.pop(ref)
        worker.ping = None
        try:
            ray.get(ref)
        except ray.exceptions.RayError as e:
            self._lost(worker, type(e).__name__)

    def _lost(self, worker: Worker, why: str, charged: bool = True) -> None:
        """A dead or unreachable worker: killed for good, and every call it held goes back; the
        one it was running is charged a death (``charged``), or else dropped: a straggler's, whose
        copy runs elsewhere or has settled its shard."""
        if worker not in self.live:
            return
        self.live.remove(worker)
        ray.kill(worker.handle, no_restart=True)
        log.warning("worker on %s lost (%s)", worker.node, why)
        if not self.live:
            self.alone_since = time.monotonic()
        held = [self.running.pop(ref)[1] for ref in worker.calls]
        worker.calls.clear()
        if held:  # calls run in the order sent: the first was running, the others were waiting
            if charged:
                self._died(held[0])
            self.queue.extendleft(reversed(held[1:]))  # not charged: they never ran there

    def _died(self, work: Work) -> None:
        shard = work.shard
        if shard.settled:
            return
        if work.part is not None:
            self._probe_died(work)
            return
        shard.deaths += 1
        if shard.deaths < self.cfg.ray.shard_attempts:
            log.warning("%s goes back to the queue (its worker died %d times)", work.describe(), shard.deaths)
            self.queue.append(work)
        elif shard.probed:
            self._give_up(shard, f"its worker died {shard.deaths} more times after probing")
        else:
            log.warning("%s: its worker died %d times; probing its records", work.describe(), shard.deaths)
            shard.probed = True
            self._probe(shard, shard.task.records)

    def _errored(self, work: Work, error: Exception) -> None:
        if work.shard.settled:
            return
        if work.part is not None:  # the stages raised on the part but the worker survived: no poison
            self._probe_passed(work)
            return
        shard = work.shard
        shard.errors += 1
        log.warning("%s raised: %s", work.describe(), _cause(error))
        if shard.errors < self.cfg.ray.shard_attempts:
            self.queue.append(work)
        else:
            self._give_up(shard, f"it raised {shard.errors} times: {_cause(error)}")

    def _no_space(self, work: Work, error: OSError) -> None:
        if self.disk_full is None:
            log.error("%s: %s; no more shards are started", work.describe(), error)
            self.disk_full = error

    def _give_up(self, shard: Shard, why: str) -> None:
        log.error("shard %d given up in this run: %s", shard.task.index, why)
        self.failed.append(shard.task.index)
        shard.settled = True
        self._stop_copies(shard)

    # Probing a shard for the records that kill its worker: halves, down to single records.

    def _probe(self, shard: Shard, records: list[InputRecord]) -> None:
        half = len(records) // 2
        for part in (records[:half], records[half:]) if half else (records,):
            shard.probes += 1
            self.queue.appendleft(Work(shard, part))

    def _probe_passed(self, work: Work) -> None:
        work.shard.probes -= 1
        self._probed(work.shard)

    def _probe_died(self, work: Work) -> None:
        shard, part = work.shard, work.part
        if len(part) > 1:
            shard.probes -= 1
            self._probe(shard, part)
        elif work.deaths + 1 < CONFIRMATIONS:
            self.queue.appendleft(dataclasses.replace(work, deaths=work.deaths + 1))
        else:
            shard.probes -= 1
            record = part[0]
            log.warning("record %d (id %r) kills its worker: dropped", record.ordinal, record.id)
            detail = f"its worker died on it {CONFIRMATIONS} times alone"
            shard.crashed.append(Drop(record.ordinal, record.id, "worker_crashed", detail))
            self._probed(shard)

    def _probed(self, shard: Shard) -> None:
        """Once every part is probed, the shard is written without its poison records."""
        if shard.probes:
            return
        poison = {drop.ordinal for drop in shard.crashed}
        records = [r for r in shard.task.records if r.ordinal not in poison]
        shard.task = dataclasses.replace(shard.task, records=records, crashed=tuple(shard.crashed))
        shard.deaths = 0
        self.queue.appendleft(Work(shard))

    # Heartbeats: lost workers, and the pool's size.

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self.last_beat < HEARTBEAT_S:
            return
        self.last_beat = now
        for worker in list(self.live):
            if worker.ping is None:
                worker.ping, worker.ping_sent = worker.handle.ping.remote(), now
                self.pings[worker.ping] = worker
            elif now - worker.ping_sent > self.cfg.ray.worker_timeout_s:
                del self.pings[worker.ping]
                self._lost(worker, f"no answer for {now - worker.ping_sent:.0f} s")
        if not self.live and now - self.alone_since > self.cfg.ray.no_worker_timeout_s:
            raise JobIncomplete(f"no worker could run for {self.cfg.ray.no_worker_timeout_s:g} s")
        self._stragglers(now)
        self._resize()

    # Stragglers: a shard past its deadline gets a copy on another worker.

    def deadline(self) -> float:
        """Seconds a shard may run: the floor, or the factor × the median of the job's shard
        times once a few are known, whichever is longer."""
        floor = self.cfg.ray.shard_deadline_floor_s
        if len(self.times) < 3:
            return floor
        return max(floor, self.cfg.ray.shard_deadline_factor * statistics.median(self.times))

    def _stragglers(self, now: float) -> None:
        deadline = self.deadline()
        for worker in list(self.live):
            work = self._head(worker)
            if work is None or work.late or work.part is not None or now - worker.since <= deadline:
                continue
            work.late, worker.stuck = True, True
            shard = work.shard
            shard.late += 1
            if shard.late >= self.cfg.ray.shard_attempts:
                self._give_up(shard, f"{shard.late} copies ran past the deadline of {deadline:.0f} s")
                continue
            log.warning(
                "%s has run %.0f s on %s (deadline %.0f s): a copy starts on another worker",
                work.describe(),
                now - worker.since,
                worker.node,
                deadline,
            )
            self.queue.appendleft(Work(shard))
            if all(w.stuck for w in self.live):  # no worker for the copy: this one's slot is needed
                self._lost(worker, "stuck, and no other worker can take its copy", charged=False)

    def _head(self, worker: Worker) -> Work | None:
        """The call the worker is running: the first of those it holds."""
        return self.running[worker.calls[0]][1] if worker.calls else None

    def _resize(self) -> None:
        """Start workers up to the pool's size, or stop those not yet placed above it."""
        size = pool_size(self.cfg, ray.cluster_resources(), self.gpus)
        while len(self.live) + len(self.starting) < size:
            worker = Worker(self.actor.remote(*self.args))
            self.starting[worker.handle.ready.remote()] = worker
        while self.starting and len(self.live) + len(self.starting) > size:
            _, worker = self.starting.popitem()
            ray.kill(worker.handle, no_restart=True)


def worker_num_gpus(cfg: PrepConfig, cluster_gpus: float) -> float:
    """GPUs per worker: as configured, else one for the detector when the cluster has any."""
    if cfg.ray.worker_num_gpus is not None:
        return cfg.ray.worker_num_gpus
    return 1.0 if cfg.grounding.name == "detector" and cluster_gpus > 0 else 0.0


def pool_size(cfg: PrepConfig, resources: dict[str, float], gpus_per_worker: float) -> int:
    """``ray.workers``, else as many workers as the cluster's CPUs (and GPUs) hold."""
    if cfg.ray.workers:
        return cfg.ray.workers
    size = int(resources.get("CPU", 1) // cfg.ray.worker_num_cpus)
    if gpus_per_worker:
        size = min(size, int(resources.get("GPU", 0) // gpus_per_worker))
    return max(1, size)


def _cause(e: Exception) -> str:
    """The last line of a Ray error: the exception a worker raised."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[-1].strip()[:200] if lines else type(e).__name__
