"""The prep driver's read pass at internet scale: records/s and memory per record.

Generates index files of 10^6 and 10^7 lines (short captions, no images: nothing opens them) and
runs, in fresh processes, (a) the driver's whole read pass (``inputs.read_input`` through the
shard planner, as ``job.run`` consumes it; blocks are parsed in ``index.READERS`` processes) and
(b) ``json.loads`` over the same lines in one process. Prints records/s for both and their ratio,
records per CPU second of the driver process alone, and the read pass's peak RSS growth per
record, and between two sizes the growth per record added: what the driver holds per input
record (its duplicate-id set) without the constant (blocks in flight; a Parquet row group,
which pyarrow decodes whole). Targets (issue 23): >= 100k records/s, <= 16 bytes per record.
Not a timed test; figures go in the notes.

    python benchmarks/bench_driver.py [--lines 1000000 10000000] [--format jsonl parquet]
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


def read_pass(index: str) -> None:
    """The driver's read pass, as job.run runs it, minus Ray: every record read, validated,
    deduplicated and cut into shards (the shards are dropped, as the workers would take them)."""
    from pipeline.prep import inputs
    from pipeline.prep.config import InputConfig, PrepConfig
    from pipeline.prep.job import ShardPlanner
    from pipeline.prep.records import keep_memory_returnable

    keep_memory_returnable()
    cfg = PrepConfig(input=InputConfig(index=index), output="/nonexistent")
    files = inputs.locate(cfg.input)
    items = inputs.read_input(
        cfg.input, files, cfg.max_caption_chars, cfg.text.max_sentences, cfg.image.max_boxes
    )
    planner = ShardPlanner(cfg.samples_per_shard, skip=set())
    for _ in planner.tasks(items):
        pass
    assert planner.records_read > 0


def json_loads(index: str) -> None:
    with open(index, "rb") as f:
        for line in f:
            json.loads(line)


def measure(kind: str, index: str) -> dict:
    """One pass in a fresh process: seconds; CPU seconds of that process alone (not of the
    reader processes it starts: what bounds the driver on a head node with cores to spare); and
    its peak RSS over its RSS after the imports."""
    code = f"""
import json, sys, time
sys.path.insert(0, {str(REPO)!r})
from benchmarks.bench_driver import {kind}, rss
import pipeline.prep.inputs, pipeline.prep.job  # imported before the baseline
before = rss("VmRSS")
start, cpu = time.perf_counter(), time.process_time()
{kind}({index!r})
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
    args = parser.parse_args()
    header = (
        "lines",
        "format",
        "read pass rec/s",
        "per driver CPU s",
        "json.loads rec/s",
        "ratio",
        "B/record",
    )
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (11, 8, 16, 17, 17, 6, 9))))
    growth: dict[str, list[tuple[int, int]]] = {fmt: [] for fmt in args.format}
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
                run = measure("read_pass", str(index))
                growth[fmt].append((lines, run["rss_growth"]))
                rate = lines / run["seconds"]
                print(
                    f"{lines:>11,} {fmt:>8} {rate:>16,.0f} {lines / run['driver_cpu']:>17,.0f}"
                    f" {baseline:>17,.0f} {rate / baseline:>6.2f} {run['rss_growth'] / lines:>9.1f}",
                    flush=True,
                )
                if fmt == "parquet":
                    index.unlink()
            jsonl.unlink()
    for fmt, sizes in growth.items():
        for (small, at_small), (large, at_large) in itertools.pairwise(sizes):
            added = (at_large - at_small) / (large - small)
            print(f"{fmt}: {added:.1f} bytes per record added from {small:,} to {large:,} records")


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"({time.time() - started:.0f} s)")
