"""Data prep survives its workers: killed workers, poison records that crash the process they
are in, and shards a run cannot write (pipeline/prep/pool.py). Each run is compared with an
undisturbed one: the same shards to the byte, the same totals and drops.

The faults come from here, not from the library: ``fault_grounders.py`` (grounders that kill
their worker on marked records, loaded as a grounding plugin) and SIGKILL from this process."""

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
from fault_grounders import ARMED_ENV, MARK
from helpers import REPO, build_shards_command

from pipeline.config import load_config
from pipeline.prep.config import PrepConfig
from pipeline.prep.job import run
from pipeline.prep.output import PROGRESS_DIR
from pipeline.synthetic import SyntheticConfig, write_corpus

pytestmark = pytest.mark.integration
TESTS = str(Path(__file__).parent)
MARKED = (17, 22)  # both in shard 2 (records 16-23), one in each half of it
ARGS = ["samples_per_shard=8"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """240 valid records (30 shards of 8); records ``MARKED`` carry the mark in their caption."""
    root = tmp_path_factory.mktemp("faults")
    write_corpus(str(root), SyntheticConfig(num_records=240, num_broken=0, seed=21))
    rows = [json.loads(line) for line in (root / "records.jsonl").read_text().splitlines()]
    for i in MARKED:
        rows[i]["caption"] += f" A {MARK} stands in the corner."
    (root / "records.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


@pytest.fixture(scope="module")
def workers_import_tests():
    """A local Ray whose workers can import ``fault_grounders`` (they inherit PYTHONPATH)."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = TESTS
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()
    if old is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def reference(corpus, workers_import_tests, tmp_path_factory) -> dict:
    """The dataset of an undisturbed run."""
    return dataset(prep(corpus, tmp_path_factory.mktemp("reference") / "ds"))


def prep(corpus: Path, out: Path, *overrides: str) -> Path:
    cfg = load_config(
        PrepConfig,
        REPO / "configs/prep/default.yaml",
        [f"input.index={corpus}/records.jsonl", f"output={out}", *ARGS, *overrides],
    )
    run(cfg)
    return out


def dataset(out: Path) -> dict:
    manifest = json.loads((out / "dataset.json").read_text())
    return {
        "shards": manifest["shards"],
        "totals": manifest["totals"],
        "dropped": pq.read_table(out / "dropped.parquet").to_pylist(),
    }


def test_a_worker_killed_five_times_costs_no_shard(corpus, reference, tmp_path):
    out = tmp_path / "ds"
    killed: list[int] = []
    killer = threading.Thread(target=kill_workers, args=(5, out, killed), daemon=True)
    killer.start()
    prep(corpus, out, "ray.shard_attempts=10")  # deaths here are not a record's fault: never probe
    killer.join()
    assert len(killed) == 5, killed
    assert dataset(out) == reference
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]  # no writer's partial file


def test_poison_records_are_dropped_and_everything_else_is_written(corpus, reference, tmp_path):
    """Two records that kill their worker, one in each half of a shard: probing finds both. A run
    where the same records fail without a crash writes the same bytes and drops, but for the reason.
    One worker, probed at its first death: the shards queued behind the crashes are not charged."""
    crash = ("ray.workers=1", "ray.shard_attempts=1")
    crashed = dataset(prep(corpus, tmp_path / "crash", *plugin("CrashOnMark"), *crash))
    failed = dataset(prep(corpus, tmp_path / "raise", *plugin("RaiseOnMark")))
    assert crashed["shards"] == failed["shards"]
    assert [(d["ordinal"], d["reason"]) for d in crashed["dropped"]] == [
        (i, "worker_crashed") for i in MARKED
    ]
    assert [(d["ordinal"], d["reason"]) for d in failed["dropped"]] == [
        (i, "grounding_failed") for i in MARKED
    ]
    assert all(d["shard"] == "shard-000002.tar" for d in crashed["dropped"])
    unlike = ("dropped_by_reason",)
    assert {k: v for k, v in crashed["totals"].items() if k not in unlike} == {
        k: v for k, v in failed["totals"].items() if k not in unlike
    }
    assert crashed["totals"]["dropped_by_reason"] == {"worker_crashed": 2}
    # Every other shard is the undisturbed run's.
    assert [s for s in crashed["shards"] if s["name"] != "shard-000002.tar"] == [
        s for s in reference["shards"] if s["name"] != "shard-000002.tar"
    ]


def test_a_shard_that_cannot_be_written_ends_the_job_with_a_rerun_that_finishes(corpus, reference, tmp_path):
    """Two records crash their worker only together while a fault lasts: no record alone is poison,
    so the shard is given up and the job says, in one line, how to finish; then the fault goes."""
    out, armed = tmp_path / "ds", tmp_path / "armed"
    armed.touch()
    job = build_shards(corpus, out, armed, *plugin("CrashOnPair"), "ray.shard_attempts=2")
    assert job.returncode == 3, job.stderr[-3000:]
    assert "Traceback" not in job.stderr
    [line] = [line for line in job.stderr.splitlines() if line.startswith("incomplete:")]
    assert line.startswith("incomplete: 29 of 30 shards complete (") and line.endswith(
        "; rerun with existing_output=resume to finish"
    ), line
    assert not (out / "dataset.json").exists()

    armed.unlink()
    rerun = build_shards(corpus, out, armed, *plugin("CrashOnPair"), "existing_output=resume")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming: 29 shards" in rerun.stderr
    assert dataset(out) == reference


def plugin(name: str) -> list[str]:
    return ["grounding.name=plugin", f"grounding.plugin=fault_grounders:{name}"]


def build_shards(corpus: Path, out: Path, armed: Path, *overrides: str) -> subprocess.CompletedProcess:
    """The job as a user runs it, with its own local Ray."""
    cmd = build_shards_command(corpus, out, *ARGS, *overrides)
    env = {**os.environ, "PYTHONPATH": TESTS, ARMED_ENV: str(armed)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def kill_workers(times: int, out: Path, killed: list[int]) -> None:
    """SIGKILL a started shard worker ``times`` times, each once a shard has landed since the
    last, while the job that writes ``out`` runs."""
    progress, landed = out / PROGRESS_DIR, 0
    while len(killed) < times and not (out / "dataset.json").exists():
        count = len(os.listdir(progress)) if progress.is_dir() else 0
        pids = started_workers()
        if count > landed and pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
            landed = count
        time.sleep(0.05)


def started_workers() -> list[int]:
    """Shard worker processes past their constructor (Ray names a process by what it runs)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if title.startswith(b"ray::ShardWorker") and b"__init__" not in title:
            pids.append(int(pid))
    return pids
