"""Data-prep soak: a large generated input full of hostile records, through the real job.

    python benchmarks/soak_prep.py [--good 8000] [--broken 2000] [--hostile 40]

The index holds ``--good`` generated records, ``--broken`` broken ones cycling over every kind
the generator knows (``synthetic.BROKEN_KINDS``), and ``--hostile`` of each kind below:
lone surrogates in caption, id, image path and box label; a FIFO, ``/dev/zero``, ``/proc/kmsg``,
an image file over ``image.max_bytes``; an EPS file; 100,000 boxes on one record; a
10,000-character label; a line nested 100,000 deep; a 5,000-digit id; a 401-digit box
coordinate; captions of 20,000 ``(`` and of 5,000 emoji.
``data_prep/build_shards.py`` runs on it as a user runs it. Checked and printed: the job
exits 0; ``inputs == written + dropped`` and the index's line count; every drop has a reason;
drops by reason; the peak RSS of the driver and of the largest worker (polled ``VmHWM``).
Not a timed test: it takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from pipeline.synthetic import BROKEN_KINDS, SyntheticConfig, write_corpus

REPO = Path(__file__).resolve().parents[1]
MAX_BYTES = 2_000_000
HOSTILE_KINDS = 16


def hostile_rows(folder: Path, copies: int) -> list[str]:
    """Index lines (JSON text) of the kinds the generator does not make."""
    os.mkfifo(folder / "fifo.jpg")
    (folder / "huge.jpg").write_bytes(b"\xff\xd8\xff" + bytes(MAX_BYTES))
    Image.new("RGB", (32, 32), (10, 200, 10)).save(folder / "image.eps", format="EPS")
    Image.new("RGB", (64, 48), (200, 30, 30)).save(folder / "red.png")
    many = [{"box": [1, 1, 30, 30], "label": "red square"}] * 100_000
    kinds = {
        "caption_surrogate": lambda i: (
            f'{{"id": "cs{i}", "image": "red.png", "caption": "A red \\ud800 square."}}'
        ),
        "id_surrogate": lambda i: f'{{"id": "\\udc80{i}", "image": "red.png", "caption": "A red square."}}',
        "image_surrogate": lambda i: (
            f'{{"id": "is{i}", "image": "re\\ud800d.png", "caption": "A red square."}}'
        ),
        "fifo": lambda i: json.dumps({"id": f"fifo{i}", "image": "fifo.jpg", "caption": "A pipe."}),
        "dev_zero": lambda i: json.dumps({"id": f"zero{i}", "image": "/dev/zero", "caption": "Zeros."}),
        "over_max_bytes": lambda i: json.dumps({"id": f"huge{i}", "image": "huge.jpg", "caption": "Big."}),
        "eps": lambda i: json.dumps({"id": f"eps{i}", "image": "image.eps", "caption": "A green square."}),
        "many_boxes": lambda i: json.dumps(
            {"id": f"boxes{i}", "image": "red.png", "caption": "A red square.", "boxes": many}
        ),
        "nested_100k_deep": lambda i: f'{{"id": "deep{i}", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "id_5000_digits": lambda i: (
            '{"id": ' + str(i + 1) * 5000 + ', "image": "red.png", "caption": "Red."}'
        ),
        "coordinate_401_digits": lambda i: (
            f'{{"id": "coord{i}", "image": "red.png", "caption": "A red square.", '
            f'"boxes": [{{"box": [1, 1, 1{"0" * 400}, 30], "label": "red square"}}]}}'
        ),
        "label_surrogate": lambda i: (
            f'{{"id": "ls{i}", "image": "red.png", "caption": "A red square.", '
            f'"boxes": [{{"box": [1, 1, 30, 30], "label": "red \\udc80"}}]}}'
        ),
        "caption_20000_parens": lambda i: json.dumps(
            {"id": f"paren{i}", "image": "red.png", "caption": "(" * 20_000}
        ),
        "caption_emoji_run": lambda i: json.dumps(
            {"id": f"emoji{i}", "image": "red.png", "caption": "\U0001f600" * 5000}
        ),
        "proc_kmsg": lambda i: json.dumps(
            {"id": f"kmsg{i}", "image": "/proc/kmsg", "caption": "The kernel log."}
        ),
        "long_label": lambda i: json.dumps(
            {
                "id": f"label{i}",
                "image": "red.png",
                "caption": "A red square.",
                "boxes": [{"box": [1, 1, 30, 30], "label": "red " * 2500}],
            }
        ),
    }
    assert len(kinds) == HOSTILE_KINDS
    return [make(i) for i in range(copies) for make in kinds.values()]


def peak_rss_mb(pattern: str) -> float:
    """The largest VmHWM (MB) among running processes whose command line matches ``pattern``."""
    peak = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if re.search(pattern, cmdline):
                status = Path(f"/proc/{pid}/status").read_text()
                peak = max(peak, int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)))
        except (OSError, AttributeError):
            continue
    return peak / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--good", type=int, default=8000)
    parser.add_argument("--broken", type=int, default=2000)
    parser.add_argument("--hostile", type=int, default=40, help="records of each hostile kind")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus, out = Path(tmp) / "corpus", Path(tmp) / "out"
        write_corpus(str(corpus), SyntheticConfig(num_records=args.good, num_broken=args.broken, seed=3))
        index = corpus / "records.jsonl"
        with index.open("a") as f:
            f.write("\n".join(hostile_rows(corpus, args.hostile)) + "\n")
        lines = sum(1 for line in index.read_bytes().split(b"\n") if line.strip())
        cmd = [
            sys.executable,
            "data_prep/build_shards.py",
            "--config",
            "configs/prep/default.yaml",
            f"input.index={index}",
            f"output={out}",
            f"image.max_bytes={MAX_BYTES}",
        ]
        start = time.perf_counter()
        job = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        driver = worker = 0.0
        while job.poll() is None:
            driver = max(driver, peak_rss_mb(r"data_prep/build_shards\.py"))
            worker = max(worker, peak_rss_mb(r"ShardWorker"))
            time.sleep(0.5)
        _, stderr = job.communicate()
        wall = time.perf_counter() - start
        if job.returncode:
            raise SystemExit(f"JOB FAILED (exit {job.returncode}):\n{stderr[-3000:]}")
        totals = json.loads((out / "dataset.json").read_text())["totals"]
        drops = pq.read_table(out / "dropped.parquet").to_pylist()
    assert totals["inputs"] == totals["written"] + totals["dropped"] == lines, (totals, lines)
    assert len(drops) == totals["dropped"] and all(d["reason"] for d in drops)
    print(
        f"{lines} records ({args.good} good, {args.broken} broken over {len(BROKEN_KINDS)} kinds, "
        f"{args.hostile} of each of {HOSTILE_KINDS} hostile kinds) in {wall:.0f} s: job exit 0"
    )
    print(
        f"inputs {totals['inputs']} = written {totals['written']} + dropped {totals['dropped']}; "
        f"every drop has a reason"
    )
    for reason, n in sorted(Counter(d["reason"] for d in drops).items()):
        print(f"  {reason:<24} {n}")
    print(f"boxes dropped: {totals['boxes_dropped_by_reason']}")
    print(f"peak RSS: driver {driver:.0f} MB, largest worker {worker:.0f} MB")


if __name__ == "__main__":
    main()
