"""Training-loader throughput: samples/s read → shuffled → decoded → resized → tokenised → collated.

    python benchmarks/bench_loader.py [--data DATASET] [--records 1000] [--workers 2] [--batches 60]

The tiny training config: 128 px (FG-Tiny-16), K = 36 text slots (1 + 5 + 30), R = 16 regions,
248-token tokenizer, 32 samples per batch, one rank. Without ``--data`` it first generates
``--records`` records and runs data prep on them (about 30 s on 2 cores), so the captions,
phrases and regions are what training really reads. The clock starts after the first batch:
worker start-up is paid once per run, not per step.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import open_clip
from torchvision import transforms

from pipeline.config import load_config
from pipeline.models.backbone import TINY_MODEL
from pipeline.prep import PrepConfig, run
from pipeline.synthetic import SyntheticConfig, write_corpus
from pipeline.training.data import DataConfig, build_loader

IMAGE_SIZE, CONTEXT, BATCH = 128, 248, 32


def prepare(records: int, workdir: str) -> str:
    write_corpus(f"{workdir}/corpus", SyntheticConfig(num_records=records))
    cfg = load_config(PrepConfig, "configs/prep/default.yaml",
                      [f"input.index={workdir}/corpus/records.jsonl", f"output={workdir}/shards",
                       "samples_per_shard=100"])
    return run(cfg).root


def throughput(dataset: str, workers: int, batches: int) -> tuple[float, dict[str, int]]:
    cfg = DataConfig(manifests=(dataset,), batch_size=BATCH, workers=workers, num_sentences=5,
                     num_phrases=30, num_regions=16)
    loader = build_loader(cfg, tokenizer=open_clip.get_tokenizer(TINY_MODEL, context_length=CONTEXT),
                          transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize(
                              open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)]),
                          image_size=IMAGE_SIZE)
    stream = iter(loader)
    next(stream)
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batches * BATCH / (time.perf_counter() - start), dict(loader.skipped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="an existing dataset folder (default: generate and prep one)")
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dataset = args.data or prepare(args.records, tmp)
        rate, skipped = throughput(dataset, args.workers, args.batches)
    print(f"loader: {rate:.0f} samples/s ({args.workers} workers, batch {BATCH}, {IMAGE_SIZE} px, K=36, "
          f"R=16, {CONTEXT} tokens; {args.batches} batches; skipped {skipped or 'none'})")


if __name__ == "__main__":
    main()
