"""``ray.dedup: distributed`` (prep/dedup.py): the ids seen so far, hash-partitioned across Ray
actors, answer as the driver's set does, and a part killed mid-read is rebuilt by reading the
input again, with no change to what the job reads. The same with a node lost on two nodes:
tests/test_ray_two_nodes.py."""

import json
import logging
import os
import signal
import time

import numpy as np
import pytest
from helpers import alive, ray_processes

from pipeline.prep import dedup
from pipeline.prep import index as index_module
from pipeline.prep.index import read_index
from pipeline.prep.records import IdSet

pytestmark = pytest.mark.integration


def test_a_distributed_set_answers_as_the_driver_set(local_ray):
    """Batches with ids repeated within them and across them: the same answers, the same size."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 2**63, size=20_000, dtype=np.uint64)
    driver, cluster = IdSet(), dedup.DistributedIdSet(3, timeout_s=60)
    try:
        for _ in range(12):
            batch = np.zeros(5000, dtype=IdSet.COLUMNS)
            batch["hi"] = rng.choice(ids, len(batch))
            batch["lo"] = batch["hi"] % 977  # a part is chosen by these bits
            digests = batch.tobytes()
            assert (cluster.add_new(digests) == driver.add_new(digests)).all()
        assert len(cluster) == len(driver) < len(ids)
    finally:
        cluster.close()


def test_a_part_killed_mid_read_is_rebuilt_and_the_read_is_unchanged(
    local_ray, tmp_path, monkeypatch, caplog
):
    """An index in small blocks, ids repeated across them (each block asks the set once); one
    part's process SIGKILLed after the first blocks: the same records and drops, in order."""
    rows = [{"id": f"r{i % 450}", "image": f"{i}.jpg", "caption": f"Caption {i}."} for i in range(600)]
    index = tmp_path / "records.jsonl"
    index.write_text("".join(json.dumps(row) + "\n" for row in rows))
    monkeypatch.setattr(index_module, "BLOCK_BYTES", 4000)
    undisturbed = list(read_index(str(index), 100))
    assert sum(getattr(item, "reason", "") == "duplicate_id" for item in undisturbed) == 150

    killed: list[int] = []

    def read(seen):
        for item in read_index(str(index), 100, seen):
            if item.ordinal == 200 and not killed:
                killed.append(ray_processes(b"ray::IdPart", os.getpid())[0])
                os.kill(killed[0], signal.SIGKILL)
                while alive(killed[0]):
                    time.sleep(0.05)
            yield item

    with caplog.at_level(logging.WARNING, logger=dedup.__name__):
        assert list(dedup.read_unique(read, dedup.on_the_cluster(3, timeout_s=60))) == undisturbed
    assert killed and "reading the input again to rebuild it" in caplog.text
