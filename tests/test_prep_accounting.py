"""Property: over any mix of good and bad records, inputs == written + dropped, and every
input row is accounted for exactly once. Runs the stage functions in-process (the Ray
wiring itself is covered by test_prep_job.py)."""

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import load_config
from pipeline.prep import PrepConfig
from pipeline.prep.inputs import locate
from pipeline.prep.job import _assign_shards
from pipeline.prep.stages import GroundStage, TextStage, _columns, image_stage, write_shard_group
from pipeline.synthetic import BROKEN_KINDS, SyntheticConfig, write_corpus


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Index lines (bytes) of a corpus with every kind of broken record, and its folder."""
    root = tmp_path_factory.mktemp("pool")
    write_corpus(str(root), SyntheticConfig(num_records=12, num_broken=len(BROKEN_KINDS)))
    lines = [line for line in (root / "records.jsonl").read_bytes().split(b"\n") if line.strip()]
    return root, lines


@pytest.fixture(scope="module")
def stages():
    cfg = load_config(PrepConfig, "configs/prep/default.yaml", ["input.index=x.jsonl", "output=x"])
    return TextStage(cfg.text), GroundStage(cfg.grounding, "pool")


def _run_in_process(index: Path, out: Path, text, ground):
    cfg = load_config(PrepConfig, "configs/prep/default.yaml",
                      [f"input.index={index}", f"output={out}", "samples_per_shard=4"])
    rows, drops = _assign_shards(cfg, locate(cfg.input))
    stats = []
    if rows:
        batch = ground(text(image_stage(_columns(rows), cfg.image)))
        by_shard = defaultdict(list)
        for i, shard in enumerate(batch["shard"]):
            by_shard[shard].append(i)
        for indices in by_shard.values():
            result = write_shard_group({k: [v[i] for i in indices] for k, v in batch.items()}, str(out), "pool")
            stats.append(json.loads(result["stats"][0]))
            drops += json.loads(result["drops"][0])
    return stats, drops


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_inputs_equal_written_plus_dropped(pool, stages, data):
    root, lines = pool
    picks = data.draw(st.lists(st.integers(0, len(lines) - 1), max_size=30), label="lines")
    with tempfile.TemporaryDirectory() as out:
        # image paths in the pool are relative to the pool folder, so the index lives there
        index = root / f"{Path(out).name}.jsonl"
        index.write_bytes(b"".join(lines[i] + b"\n" for i in picks))
        try:
            stats, drops = _run_in_process(index, Path(out), *stages)
        finally:
            index.unlink()
    written = sum(s["samples"] for s in stats)
    assert written + len(drops) == len(picks)
    assert sorted(d["ordinal"] for d in drops) == sorted(set(d["ordinal"] for d in drops))
    assert sum(s["inputs"] for s in stats) == len(picks) - sum(d["shard"] is None for d in drops)
