"""Ray job entry: build WebDataset shards + manifest from an index of (image, caption[, boxes]).

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python data_prep/build_shards.py --config configs/prep/default.yaml \
        input.index=/data/records.jsonl output=/data/shards/mydataset

Without a cluster it starts a local Ray. Keys override the YAML (dotted, YAML values).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from pipeline.config import ConfigError, load_config  # noqa: E402
from pipeline.prep import PrepConfig, run  # noqa: E402
from pipeline.shards.check import inspect  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file (configs/prep/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. input.index=... output=...")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = load_config(PrepConfig, args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    print(inspect(run(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
