"""Property: over any mix of good and bad records, inputs == written + dropped, and every
input row is accounted for exactly once. Runs the planner and a worker in-process (the Ray
wiring itself is covered by test_prep_job.py)."""

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import load_config
from pipeline.prep.config import PrepConfig
from pipeline.prep.inputs import locate, read_input
from pipeline.prep.job import ShardPlanner
from pipeline.prep.worker import ShardWorker
from pipeline.synthetic import BROKEN_KINDS, SyntheticConfig, write_corpus


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Index lines (bytes) of a corpus with every kind of broken record, and its folder."""
    root = tmp_path_factory.mktemp("pool")
    write_corpus(str(root), SyntheticConfig(num_records=12, num_broken=len(BROKEN_KINDS)))
    lines = [line for line in (root / "records.jsonl").read_bytes().split(b"\n") if line.strip()]
    return root, lines


@pytest.fixture(scope="module")
def worker(pool, tmp_path_factory):
    """One worker (spaCy loads once) writing into one folder, emptied for each example."""
    root, _ = pool
    out = tmp_path_factory.mktemp("out")
    cfg = _config(root / "index.jsonl", out)
    return ShardWorker(cfg, str(out), "pool", run_id=""), out


def _config(index: Path, out: Path) -> PrepConfig:
    return load_config(
        PrepConfig,
        "configs/prep/default.yaml",
        [f"input.index={index}", f"output={out}", "samples_per_shard=4"],
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_inputs_equal_written_plus_dropped(pool, worker, data):
    (root, lines), (worker, out) = pool, worker
    picks = data.draw(st.lists(st.integers(0, len(lines) - 1), max_size=30), label="lines")
    shutil.rmtree(out)
    out.mkdir()
    index = root / "index.jsonl"  # image paths in the pool are relative to the pool folder
    index.write_bytes(b"".join(lines[i] + b"\n" for i in picks))
    cfg = _config(index, out)
    planner = ShardPlanner(cfg.samples_per_shard, skip=set())
    results = [
        worker.process(task)
        for task in planner.tasks(read_input(cfg.input, locate(cfg.input), cfg.max_caption_chars, 16, 500))
    ]
    stats, drops = [r.stats for r in results], planner.read_drops + [d for r in results for d in r.drops]
    written = sum(s.samples for s in stats)
    assert written + len(drops) == len(picks)
    assert sorted(d.ordinal for d in drops) == sorted(set(d.ordinal for d in drops))
    assert sum(s.inputs for s in stats) == len(picks) - sum(d.shard is None for d in drops)
