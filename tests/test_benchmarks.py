"""The training benchmarks still run (their figures are not checked: benchmarks are not timed
tests); gpu_check has its own test."""

import subprocess
import sys

import pytest
from helpers import REPO

from pipeline.objectives.config import NAMES

pytestmark = pytest.mark.integration


def bench(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_bench_objectives_prints_a_row_per_objective(generated_shards):
    out = bench(
        "bench_objectives.py", f"--data={generated_shards}", "--batches=2", "--warmup=0", "--repeats=1"
    )
    rows = [line.split(":")[0].strip() for line in out.splitlines() if ":" in line]
    assert [row for row in rows if row in NAMES] == list(NAMES)


def test_bench_training_runs(generated_shards):
    out = bench("bench_training.py", f"--data={generated_shards}", "--batches=3")
    assert "samples/s" in out
