"""Fixtures shared by the loader and training tests."""

from pathlib import Path

import pytest
import ray

from pipeline.config import load_config
from pipeline.prep import PrepConfig, run
from pipeline.synthetic import SyntheticConfig, write_corpus

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def generated_shards(tmp_path_factory) -> Path:
    """A small dataset made the real way: generated corpus → data prep on a local Ray."""
    root = tmp_path_factory.mktemp("generated")
    write_corpus(str(root / "corpus"), SyntheticConfig(num_records=96, seed=7))
    cfg = load_config(PrepConfig, REPO / "configs/prep/default.yaml",
                      [f"input.index={root}/corpus/records.jsonl", f"output={root}/shards",
                       "samples_per_shard=24", "ray.text_batch_size=48"])
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        run(cfg)
    finally:
        ray.shutdown()
    return root / "shards"
