"""The demo's data as training batches, for the benchmarks: generated corpus → data prep → loader."""

from __future__ import annotations

import math
import time
from pathlib import Path

from pipeline.batch import Batch
from pipeline.config import load_config
from pipeline.synthetic import SyntheticConfig, write_corpus
from pipeline.training.config import TrainConfig
from pipeline.training.data import build_run_loader

REPO = Path(__file__).resolve().parents[1]


def prepare(records: int, workdir: str, shards: int = 10) -> str:
    """The dataset folder of ``records`` generated samples in ``shards`` shards (a loader worker
    needs one of its own). Ray stops afterwards, so it holds no cores while benchmarks measure.
    Ray and spaCy are imported here, not above: ``gpu_check.py --data`` reads a dataset made
    elsewhere, on a GPU machine that has neither."""
    import ray

    from pipeline.prep.config import PrepConfig
    from pipeline.prep.job import run

    write_corpus(f"{workdir}/corpus", SyntheticConfig(num_records=records))
    cfg = load_config(
        PrepConfig,
        REPO / "configs/prep/default.yaml",
        [
            f"input.index={workdir}/corpus/records.jsonl",
            f"output={workdir}/shards",
            f"samples_per_shard={math.ceil(records / shards)}",
        ],
    )
    try:
        return run(cfg).root
    finally:
        ray.shutdown()


def loader_rate(cfg: TrainConfig, rounds: int) -> tuple[float, list[Batch]]:
    """Samples/s of the training loader alone, and the batches it made.

    Timed over ``rounds`` rounds of one batch per worker, after the first round: worker start-up
    is paid once per run, and the first round's batches come out nearly together.
    """
    per_round = max(cfg.data.workers, 1)
    stream = iter(build_run_loader(cfg.data, cfg.model, rank=0, world_size=1, start_batch=0))
    kept = [next(stream) for _ in range(per_round)]
    start = time.perf_counter()
    kept += [next(stream) for _ in range(rounds * per_round)]
    elapsed = time.perf_counter() - start
    stream.close()  # stops the workers: they would go on decoding while the caller measures
    return rounds * per_round * cfg.data.batch_size / elapsed, kept
