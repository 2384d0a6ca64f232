"""The prep driver's cost per shard as the pool grows: 10, 100 and 1,000 workers.

A cluster of 1,000 workers cannot run on one machine, so two measurements make the figure:

1. **Our pool's bookkeeping** (``prep/pool.py``: dispatch, settling results, heartbeats) with
   Ray replaced by an in-process stand-in that runs each call at once and finishes the oldest
   shard call whenever the pool waits (so every worker always holds ``TASKS_PER_WORKER`` calls,
   as on a busy cluster). The stand-in's own time is measured and subtracted: what is left is
   the driver's Python per shard, and per heartbeat (one ping to every worker, the straggler
   scan, the resize).
2. **Real Ray's part**: ``ray.wait`` over as many pending refs as the pool holds at that size
   (each worker's calls and its ping), on a local Ray, as the pool calls it twice per wake-up;
   and one actor call submitted and its result fetched.

Prints both per shard and as ratios to the 10-worker pool, then the driver's load at 1,000
workers for a few shard times (a shard every T/1000 s, a heartbeat every 2 s) as a share of one
core. Not a timed test; figures go in the notes (docs/data_prep.md, "Scale").

    python benchmarks/bench_pool.py [--workers 10 100 1000] [--shards 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import deque
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ray  # noqa: E402

from pipeline.prep import pool as pool_module  # noqa: E402
from pipeline.prep.config import InputConfig, PrepConfig, RayConfig  # noqa: E402
from pipeline.prep.worker import ShardTask  # noqa: E402


class Ref:
    __slots__ = ("ready", "value")

    def __init__(self, value, ready: bool) -> None:
        self.value, self.ready = value, ready


class SimRay:
    """What ``pool.py`` calls of Ray, in-process: actors answer ``ready``, ``provenance`` and
    ``ping`` at once; a ``process`` call finishes when the pool waits and nothing is ready, the
    oldest first. ``own`` is the seconds spent in here, subtracted from the pool's time."""

    exceptions = ray.exceptions

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pending: deque[Ref] = deque()
        self.own = 0.0
        self.made = 0

    def cluster_resources(self) -> dict:
        return {"CPU": float(self.workers)}

    def remote(self, **_):
        return lambda cls: SimpleNamespace(options=lambda **_: SimpleNamespace(remote=self._actor))

    def _actor(self, *_):
        self.made += 1
        node = f"node{self.made % 100}"
        actor = SimpleNamespace()
        actor.ready = SimpleNamespace(remote=lambda: Ref(node, True))
        actor.provenance = SimpleNamespace(remote=lambda: Ref({}, True))
        actor.ping = SimpleNamespace(remote=lambda: Ref(None, True))
        actor.process = SimpleNamespace(remote=self._process)
        actor.probe = actor.process
        return actor

    def _process(self, task: ShardTask) -> Ref:
        start = time.perf_counter()
        ref = Ref(SimpleNamespace(stats=SimpleNamespace(name=f"shard-{task.index}")), False)
        self.pending.append(ref)
        self.own += time.perf_counter() - start
        return ref

    def wait(self, refs: list, num_returns: int = 1, timeout: float | None = None):
        start = time.perf_counter()
        ready = [ref for ref in refs if ref.ready]
        if not ready and timeout and self.pending:
            self.pending.popleft().ready = True
            ready = [ref for ref in refs if ref.ready]
        self.own += time.perf_counter() - start
        return ready[: max(num_returns, len(ready)) if timeout == 0 else num_returns], []

    def get(self, ref, timeout: float | None = None):
        return ref.value

    def kill(self, *_, **__) -> None:
        pass


def bookkeeping(workers: int, shards: int) -> tuple[float, float]:
    """Seconds of our pool's own Python per shard, and per heartbeat, at ``workers``."""
    sim = SimRay(workers)
    pool_module.ray = sim
    try:
        cfg = PrepConfig(input=InputConfig(index="x.jsonl"), output="/nonexistent", ray=RayConfig())
        pool = pool_module.WorkerPool(cfg, "/nonexistent", "bench", "run")
        pool.provenance()
        while pool.starting:  # every worker placed before the clock starts
            pool._placed(next(iter(pool.starting)))
        tasks = (ShardTask(i, []) for i in range(shards))
        sim.own, start = 0.0, time.perf_counter()
        done = sum(1 for _ in pool.map(tasks))
        per_shard = (time.perf_counter() - start - sim.own) / done

        pool = pool_module.WorkerPool(cfg, "/nonexistent", "bench", "run")
        while pool.starting:
            pool._placed(next(iter(pool.starting)))
        beats, start = 20, time.perf_counter()
        for _ in range(beats):
            pool.last_beat = 0.0
            pool._heartbeat()
            for ref in list(pool.pings):  # answered, as live workers do
                pool._answered(ref)
        return per_shard, (time.perf_counter() - start) / beats
    finally:
        pool_module.ray = ray


@ray.remote(max_concurrency=10_000)
class Gate:
    """Calls that stay pending until released: refs for ``ray.wait`` to look at."""

    def __init__(self) -> None:
        self.open = asyncio.Event()

    async def held(self) -> None:
        await self.open.wait()

    async def release(self) -> None:
        self.open.set()


@ray.remote
class Echo:
    def call(self, value):
        return value


def ray_wait(refs_held: int, calls: int = 50) -> float:
    """The driver's CPU seconds for the pool's two ``ray.wait`` calls on a wake-up, over
    ``refs_held`` pending refs."""
    gate = Gate.remote()
    refs = [gate.held.remote() for _ in range(refs_held)]
    ray.wait(refs, num_returns=1, timeout=0.5)  # submitted and pending
    start = time.process_time()
    for _ in range(calls):
        ray.wait(refs, num_returns=1, timeout=0)
        ray.wait(refs, num_returns=len(refs), timeout=0)
    seconds = (time.process_time() - start) / calls
    ray.get(gate.release.remote())
    ray.get(refs)
    ray.kill(gate)
    return seconds


def actor_call(calls: int = 1000) -> float:
    """The driver's CPU seconds to submit one actor call with a shard-sized task and fetch its
    result (all submitted, then all fetched, as the pool keeps calls in flight)."""
    echo = Echo.remote()
    ray.get(echo.call.remote(None))
    task = ShardTask(0, [])
    start = time.process_time()
    ray.get([echo.call.remote(task) for _ in range(calls)])
    seconds = (time.process_time() - start) / calls
    ray.kill(echo)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--shards", type=int, default=20_000)
    args = parser.parse_args()
    ray.init(include_dashboard=False, logging_level="ERROR")
    call = actor_call()
    rows = []
    for workers in args.workers:
        per_shard, per_beat = bookkeeping(workers, args.shards)
        refs = workers * (pool_module.TASKS_PER_WORKER + 1)  # each worker's calls and its ping
        rows.append((workers, per_shard, per_beat, ray_wait(refs)))
    base = rows[0]
    print(
        f"one actor call submitted and fetched: {call * 1e6:,.0f} µs of driver CPU (real Ray, once per shard)"
    )
    header = ("workers", "ours µs/shard", "x", "ours ms/beat", "x", "ray.wait µs/wake", "x")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (8, 14, 6, 13, 6, 17, 6))))
    for workers, per_shard, per_beat, wait in rows:
        print(
            f"{workers:>8,} {per_shard * 1e6:>14,.1f} {per_shard / base[1]:>6.2f}"
            f" {per_beat * 1e3:>13,.2f} {per_beat / base[2]:>6.2f}"
            f" {wait * 1e6:>17,.0f} {wait / base[3]:>6.2f}"
        )
    workers, per_shard, per_beat, wait = rows[-1]
    for shard_s in (10, 60, 300):
        rate = workers / shard_s  # shards finishing per second
        load = rate * (per_shard + wait + call) + per_beat / pool_module.HEARTBEAT_S
        print(
            f"{workers:,} workers, {shard_s} s shards: {rate:,.0f} shards/s, the driver {load:.0%} of a core"
        )
    ray.shutdown()


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"({time.time() - started:.0f} s)")
