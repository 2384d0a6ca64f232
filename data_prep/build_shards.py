"""Ray job entry: build WebDataset shards + manifest from (image, caption[, boxes]) records: our
index (JSONL or Parquet), img2dataset tars, COCO, ShareGPT4V or Visual Genome files
(``input.format``).

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python data_prep/build_shards.py --config configs/prep/default.yaml \
        input.index=/data/records.jsonl output=/data/shards/mydataset

Without a cluster it starts a local Ray. Keys override the YAML (dotted, YAML values).
Ctrl-C or SIGTERM stops it with one line and exit status 130 or 143 (128 + the signal).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from pipeline.config import config_from_command_line, exit_on_user_error
from pipeline.prep.config import PrepConfig
from pipeline.prep.job import run
from pipeline.shards.check import inspect


def main() -> None:
    cfg = config_from_command_line(PrepConfig, __doc__)
    manifest = exit_on_user_error(lambda: run(cfg))
    print(inspect(manifest))


if __name__ == "__main__":
    main()
