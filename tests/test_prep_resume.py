"""Restartable data prep: a driver killed mid-job, rerun with the same arguments, finishes with
the dataset a run that never failed writes, without redoing the shards that were complete."""

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.prep.job import CHAOS_DRIVER_ENV
from pipeline.prep.stages import PROGRESS_DIR
from pipeline.synthetic import SyntheticConfig, write_corpus

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


def build(corpus: Path, out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "data_prep/build_shards.py", "--config", "configs/prep/default.yaml",
           f"input.index={corpus}/records.jsonl", f"output={out}", "samples_per_shard=8",
           "ray.text_batch_size=32", "existing_output=resume", *extra]
    process = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    stdout, stderr = process.communicate(timeout=600)
    with contextlib.suppress(ProcessLookupError):  # a killed driver leaves its local Ray's agents behind
        os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)


def dataset(out: Path) -> dict:
    manifest = json.loads((out / "dataset.json").read_text())
    return {"files": sorted(os.listdir(out)), "run_id": manifest["run_id"], "shards": manifest["shards"],
            "totals": manifest["totals"], "shard_stats": manifest["shard_stats"],
            "dropped": pq.read_table(out / "dropped.parquet").to_pylist()}


def test_killed_driver_then_rerun_gives_the_uninterrupted_dataset(tmp_path):
    write_corpus(str(tmp_path / "corpus"), SyntheticConfig(num_records=56, num_broken=8, seed=5))
    clean = build(tmp_path / "corpus", tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr[-3000:]

    out = tmp_path / "resumed"
    killed = build(tmp_path / "corpus", out, env={CHAOS_DRIVER_ENV: "3"})
    assert killed.returncode != 0 and "chaos: killing the driver" in killed.stderr
    assert not (out / "dataset.json").exists()
    finished = {p.stem for p in (out / PROGRESS_DIR).iterdir()}
    assert len(finished) >= 3
    mtimes = {name: (out / f"{name}").stat().st_mtime_ns for name in finished}

    rerun = build(tmp_path / "corpus", out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming: {len(finished)} shards" in rerun.stderr
    assert {name: (out / name).stat().st_mtime_ns for name in finished} == mtimes  # not rewritten
    assert dataset(out) == dataset(tmp_path / "clean")

    again = build(tmp_path / "corpus", out)
    assert again.returncode == 0 and "already finished" in again.stderr
    changed = build(tmp_path / "corpus", out, "samples_per_shard=9")
    assert changed.returncode != 0 and "different job" in changed.stderr
