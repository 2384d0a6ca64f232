"""Training entry: one process per GPU (or CPU rank), launched by srun, torchrun or by hand.

    sbatch slurm/train_beta.sh                                   # a cluster (see slurm/)
    torchrun --nproc_per_node 2 train/train.py --config configs/train/beta_tiny.yaml data.manifests=[runs/demo/shards]
    python train/train.py --config configs/train/beta_tiny.yaml output=runs/mine   # one process

Keys override the YAML (dotted, YAML values). A run folder that has checkpoints resumes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from pipeline.config import ConfigError, load_config  # noqa: E402
from pipeline.training.config import TrainConfig  # noqa: E402
from pipeline.training.loop import train  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file (configs/train/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. output=runs/x steps=200")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = load_config(TrainConfig, args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    result = train(cfg)
    if result.export is not None:
        print(f"finished at step {result.step}; checkpoint {result.checkpoint}; open_clip export {result.export}")
    elif not result.finished:
        print(f"stopped at step {result.step}; checkpoint {result.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
