"""Restartable data prep: a driver killed mid-job, rerun with the same arguments, finishes with
the dataset a run that never failed writes, without redoing the shards that were complete."""

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import build_shards_command

from pipeline.prep.output import PROGRESS_DIR
from pipeline.synthetic import SyntheticConfig, write_corpus

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


def start(corpus: Path, out: Path, *extra: str) -> subprocess.Popen:
    """The job in a session of its own: the driver and the local Ray it starts are one process group."""
    cmd = build_shards_command(corpus, out, "samples_per_shard=8", "existing_output=resume", *extra)
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def build(corpus: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    process = start(corpus, out, *extra)
    stdout, stderr = process.communicate(timeout=600)
    with contextlib.suppress(ProcessLookupError):  # a killed driver leaves its local Ray's agents behind
        os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def dataset(out: Path) -> dict:
    manifest = json.loads((out / "dataset.json").read_text())
    return {
        "files": sorted(os.listdir(out)),
        "run_id": manifest["run_id"],
        "shards": manifest["shards"],
        "totals": manifest["totals"],
        "shard_stats": manifest["shard_stats"],
        "dropped": pq.read_table(out / "dropped.parquet").to_pylist(),
    }


def kill_after_shards(process: subprocess.Popen, progress: Path, shards: int) -> None:
    """kill -9 the job's whole process group once ``shards`` shards have landed."""
    deadline = time.monotonic() + 300
    while not (progress.is_dir() and len(os.listdir(progress)) >= shards):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no shard landed in 300 s"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    # Ray's worker processes are not in the group: they may finish the shards they were given
    # before they notice their driver is gone. The landed shards are what they left.
    landed, still = None, 0.0
    while still < 5:
        time.sleep(0.5)
        now = sorted(os.listdir(progress))
        landed, still = now, (still + 0.5 if now == landed else 0.0)


def test_driver_killed_mid_stream_then_rerun_gives_the_uninterrupted_dataset(tmp_path):
    write_corpus(str(tmp_path / "corpus"), SyntheticConfig(num_records=600, num_broken=8, seed=5))
    clean = build(tmp_path / "corpus", tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr[-3000:]

    out = tmp_path / "resumed"
    kill_after_shards(start(tmp_path / "corpus", out), out / PROGRESS_DIR, shards=3)
    assert not (out / "dataset.json").exists()
    finished = {p.stem for p in (out / PROGRESS_DIR).iterdir() if p.suffix == ".json"}
    assert 3 <= len(finished) < len(json.loads((tmp_path / "clean" / "dataset.json").read_text())["shards"])
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
