"""Training entry: one process per GPU (or CPU rank), launched by srun, torchrun or by hand.

    sbatch slurm/train_beta.sh                     # a cluster (see slurm/)
    torchrun --nproc_per_node 2 train/train.py --config configs/train/beta_tiny.yaml   # after make demo
    python train/train.py --config configs/train/beta_tiny.yaml output=runs/mine   # one process

Keys override the YAML (dotted, YAML values). A run folder that has checkpoints resumes.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from pipeline.config import config_from_command_line, exit_on_user_error
from pipeline.training.config import TrainConfig
from pipeline.training.loop import train

if __name__ == "__main__":
    cfg = config_from_command_line(TrainConfig, __doc__)
    result = exit_on_user_error(
        lambda: train(cfg), interrupted="training stopped by Ctrl-C; its last checkpoint resumes it"
    )
    if result.main:
        ended = "finished" if result.finished else "stopped"
        exported = f"; open_clip export {result.export}" if result.export else ""
        print(f"{ended} at step {result.step}; checkpoint {result.checkpoint}{exported}")
