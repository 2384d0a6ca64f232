"""The prep driver's read pass at internet scale: records/s and memory per record.

Generates index files of 10^6 and 10^7 lines (short captions, no images: nothing opens them) and
runs, in fresh processes, (a) the driver's whole read pass (``inputs.read_input`` through the
shard planner, as ``job.run`` consumes it; blocks are parsed in ``index.READERS`` processes) and
(b) ``json.loads`` over the same lines in one process. Prints records/s for both and their ratio,
records per CPU second of the driver process alone, and the read pass's peak RSS growth per
record, and between two sizes the growth per record added: what the driver holds per input
record (its duplicate-id set) without the constant (blocks in flight; a Parquet row group,
which pyarrow decodes whole). Targets (issue 23): >= 100k records/s, <= 16 bytes per record.

``--dedup driver distributed`` runs the read pass with each place for the id set
(``ray.dedup``; distributed: ``--parts`` actors on a local Ray started before the baseline) and
prints, per size, the distributed pass's records/s against the driver's: what moving the set
off the head costs in speed, against the bytes per record it takes off the head's memory.
Not a timed test; figures go in the notes (docs/data_prep.md, "Scale").

    python benchmarks/bench_driver.py [--lines 1000000 10000000] [--format jsonl parquet]
        [--dedup driver distributed] [--parts 4]
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_index(path: Path, lines: int) -> None:
    """``lines`` records with unique ids, short captions and a box on every tenth."""
    with path.open("w") as f:
        for i in range(lines):
            row = {
                "id": f"r{i:010d}",
                "image": f"images/{i % 1000:04d}/{i:010d}.jpg",
                "caption": f"A photo {i}.",
            }
            if i % 10 == 0:
                row["boxes"] = [{"box": [1, 2, 30, 40], "label": "a photo"}]
            f.write(json.dumps(row) + "\n")


def to_parquet(jsonl: Path, parquet: Path) -> None:
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    pq.write_table(pj.read_json(jsonl), parquet)


def read_pass(index: str, parts: int = 0) -> None:
    """The driver's read pass, as job.run runs it, minus the workers: every record read,
    validated, deduplicated (in the driver; with ``parts``, on that many Ray actors) and cut into
    shards (the shards are dropped, as the workers would take them)."""
    from pipeline.prep import dedup, inputs
    from pipeline.prep.config import InputConfig, PrepConfig
    from pipeline.prep.job import ShardPlanner
    from pipeline.prep.records import keep_memory_returnable

    keep_memory_returnable()
    cfg = PrepConfig(input=InputConfig(index=index), output="/nonexistent")
    files = inputs.locate(cfg.input)
    id_sets = dedup.on_the_cluster(parts, timeout_s=600) if parts else dedup.in_driver
    items = inputs.read_input(
        cfg.input, files, cfg.max_caption_chars, cfg.text.max_sentences, cfg.image.max_boxes, id_sets=id_sets
    )
    planner = ShardPlanner(cfg.samples_per_shard, skip=set())
    for _ in planner.tasks(items):
        pass
    assert planner.records_read > 0


def json_loads(index: str, parts: int = 0) -> None:
    with open(index, "rb") as f:
        for line in f:
            json.loads(line)


def measure(kind: str, index: str, parts: int = 0) -> dict:
    """One pass in a fresh process: seconds; CPU seconds of that process alone (not of the
    reader processes it starts: what bounds the driver on a head node with cores to spare); and
    its peak RSS over its RSS after the imports (and Ray's start, with ``parts``)."""
    code = f"""
import json, sys, time
sys.path.insert(0, {str(REPO)!r})
from benchmarks.bench_driver import {kind}, rss
import pipeline.prep.inputs, pipeline.prep.job  # imported before the baseline
if {parts}:
    import ray
    ray.init(include_dashboard=False, logging_level="ERROR")
before = rss("VmRSS")
start, cpu = time.perf_counter(), time.process_time()
{kind}({index!r}, {parts})
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({{"seconds": seconds, "driver_cpu": cpu, "rss_growth": rss("VmHWM") - before}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def rss(field: str) -> int:
    """This process's resident set (VmRSS) or its peak (VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--format", nargs="+", default=["jsonl", "parquet"], choices=["jsonl", "parquet"])
    parser.add_argument("--dedup", nargs="+", default=["driver"], choices=["driver", "distributed"])
    parser.add_argument("--parts", type=int, default=4, help="actors of a distributed id set")
    args = parser.parse_args()
    header = (
        "lines",
        "format",
        "dedup",
        "read pass rec/s",
        "per driver CPU s",
        "json.loads rec/s",
        "ratio",
        "B/record",
    )
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (11, 8, 12, 16, 17, 17, 6, 9))))
    growth: dict[tuple[str, str], list[tuple[int, int]]] = {}
    rates: dict[tuple[int, str, str], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for lines in args.lines:
            jsonl = Path(tmp) / f"index-{lines}.jsonl"
            write_index(jsonl, lines)
            baseline = lines / measure("json_loads", str(jsonl))["seconds"]
            for fmt in args.format:
                index = jsonl
                if fmt == "parquet":
                    index = Path(tmp) / f"index-{lines}.parquet"
                    to_parquet(jsonl, index)
                for where in args.dedup:
                    run = measure("read_pass", str(index), args.parts if where == "distributed" else 0)
                    growth.setdefault((fmt, where), []).append((lines, run["rss_growth"]))
                    rate = rates[lines, fmt, where] = lines / run["seconds"]
                    print(
                        f"{lines:>11,} {fmt:>8} {where:>12} {rate:>16,.0f}"
                        f" {lines / run['driver_cpu']:>17,.0f} {baseline:>17,.0f}"
                        f" {rate / baseline:>6.2f} {run['rss_growth'] / lines:>9.1f}",
                        flush=True,
                    )
                if fmt == "parquet":
                    index.unlink()
            jsonl.unlink()
    for (fmt, where), sizes in growth.items():
        for (small, at_small), (large, at_large) in itertools.pairwise(sizes):
            added = (at_large - at_small) / (large - small)
            print(
                f"{fmt}, {where}: {added:.1f} driver bytes per record added"
                f" from {small:,} to {large:,} records"
            )
    for (lines, fmt, where), rate in rates.items():
        if where == "distributed" and (lines, fmt, "driver") in rates:
            ratio = rate / rates[lines, fmt, "driver"]
            print(f"{lines:,} {fmt}: distributed dedup reads at {ratio:.2f}x the driver set's records/s")


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"({time.time() - started:.0f} s)")
