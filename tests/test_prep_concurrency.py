"""One job per output folder (pipeline/prep/lock.py): of two jobs on one output, one runs and the
other is refused before it reads or deletes anything there; a lock left by a job that is gone
is taken over on its host, and refused from another host, naming what to remove."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, build_shards_command

from pipeline.config import OutputInTheWay
from pipeline.prep import lock
from pipeline.prep.output import LOCK_FILE
from pipeline.synthetic import SyntheticConfig, write_corpus

HOLD = """import sys, time
from pipeline.prep import lock
lock.acquire(sys.argv[1], "other")
print(1, flush=True)
time.sleep(600)"""


def holder(url: str) -> subprocess.Popen:
    """Another process that takes the lock at ``url`` and keeps it (a job that is running)."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, url], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "1\n"
    return process


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def write_lock(path: Path, **fields) -> None:
    holder = {"host": socket.gethostname(), "pid": dead_pid(), "run_id": "r0", "since": "then", **fields}
    path.write_text(json.dumps(holder))


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()}


def test_a_lock_is_exclusive_and_released_only_by_its_job(tmp_path):
    url = str(tmp_path / "out" / LOCK_FILE)
    first = lock.acquire(url, "r1")
    with pytest.raises(OutputInTheWay, match=f"pid {os.getpid()}, run r1.*lock {url}"):
        lock.acquire(url, "r2")
    os.remove(url)  # removed by hand while the job runs: the next job takes it
    second = lock.acquire(url, "r2")
    first.release()  # not first's any more: stays
    assert json.loads(Path(url).read_text())["run_id"] == "r2"
    with pytest.raises(OutputInTheWay, match="no longer this job's"):
        first.check()
    second.check()
    second.release()
    assert not Path(url).exists()


def test_a_lock_whose_job_is_gone_is_taken_over_with_a_log_line(tmp_path, caplog):
    path = tmp_path / LOCK_FILE
    write_lock(path)
    with lock.held(str(path), "r1"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert "taking over the lock of a job that is gone" in caplog.text and not path.exists()
    # a pid that is alive but another process now (a container restarted): its start time differs
    write_lock(path, pid=os.getpid(), pid_started=1)
    with lock.held(str(path), "r1"):
        assert json.loads(path.read_text())["run_id"] == "r1"
    assert os.listdir(tmp_path) == []


def test_a_lock_of_a_live_job_or_another_host_is_refused_naming_what_to_remove(tmp_path):
    path = tmp_path / LOCK_FILE
    running = holder(str(path))
    try:
        with pytest.raises(
            OutputInTheWay, match=f"host {socket.gethostname()}, pid {running.pid}, run other"
        ):
            lock.acquire(str(path), "r1")
    finally:
        running.kill()
        running.wait()
    lock.acquire(str(path), "r1").release()  # its job is gone now
    write_lock(path, host="node-7", pid=4242)  # a dead pid here, but on node-7 it may run
    with pytest.raises(OutputInTheWay) as refused:
        lock.acquire(str(path), "r1")
    assert f"host node-7, pid 4242, run r0, since then); lock {path}" in str(refused.value)
    assert "If no such job runs on host node-7 any more, remove the lock" in str(refused.value)
    assert json.loads(path.read_text())["host"] == "node-7"


@pytest.mark.integration
def test_an_s3_lock_is_a_conditional_put(s3):
    url = f"{s3.url}/lock-test/{LOCK_FILE}"
    with lock.held(url, "r1") as mine:
        with pytest.raises(OutputInTheWay, match=f"pid {os.getpid()}, run r1"):
            lock.acquire(url, "r2")
        mine.check()
    with pytest.raises(FileNotFoundError):
        lock.storage.read_bytes(url)
    stale = {"host": socket.gethostname(), "pid": dead_pid(), "run_id": "r0", "since": "then"}
    lock.storage.write_atomic(url, json.dumps(stale).encode())
    with lock.held(url, "r1"):  # taken over with If-Match on the stale lock's ETag
        assert json.loads(lock.storage.read_bytes(url))["run_id"] == "r1"
    assert not lock.storage.exists(url)


def start(corpus: Path, out: Path, *overrides: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # each job its own local Ray
    cmd = build_shards_command(corpus, out, *overrides)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.integration
def test_two_jobs_started_together_on_one_output_one_runs_the_other_is_refused(tmp_path):
    write_corpus(str(tmp_path / "corpus"), SyntheticConfig(num_records=240, num_broken=0, seed=3))
    out = tmp_path / "out"
    jobs = {n: start(tmp_path / "corpus", out, f"samples_per_shard={n}") for n in (100, 120)}
    ended = {n: (job.wait(timeout=600), *job.communicate()) for n, job in jobs.items()}
    [(won, (_, stdout, _))] = [(n, e) for n, e in ended.items() if e[0] == 0]
    [(lost, (status, _, stderr))] = [(n, e) for n, e in ended.items() if e[0] != 0]
    assert status == 2, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert (
        last.startswith("error: output: another prep job writes there (host ") and "Traceback" not in stderr
    )
    assert f"lock {out}/{LOCK_FILE}" in last
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["config"]["samples_per_shard"] == won != lost
    expected = {100: [100, 100, 40], 120: [120, 120]}[won]
    assert [s["samples"] for s in manifest["shards"]] == expected and "240 written" in stdout
    assert LOCK_FILE not in os.listdir(out)


@pytest.mark.integration
def test_a_held_lock_refuses_overwrite_and_resume_before_they_touch_the_output(generated_shards, tmp_path):
    """The dataset of ``generated_shards`` (96 records, 24 a shard); another job holds its lock."""
    out = tmp_path / "shards"
    shutil.copytree(generated_shards, out)
    before = snapshot(out)
    corpus = generated_shards.parent / "corpus"
    running = holder(str(out / LOCK_FILE))
    try:
        for mode in ("overwrite", "resume"):
            job = start(corpus, out, "samples_per_shard=24", f"existing_output={mode}")
            _, stderr = job.communicate(timeout=120)
            assert job.returncode == 2 and stderr.count("\n") == 1, stderr[-3000:]
            assert f"pid {running.pid}, run other" in stderr
            assert {k: v for k, v in snapshot(out).items() if k != LOCK_FILE} == before
    finally:
        running.kill()
        running.wait()
    started = time.time()
    job = start(corpus, out, "samples_per_shard=24", "existing_output=resume")  # the holder is gone
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 0 and "taking over the lock of a job that is gone" in stderr
    assert "already finished" in stderr and snapshot(out) == before and time.time() - started < 120
