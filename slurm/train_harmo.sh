#!/bin/bash
# HarmoCLIP training: sbatch slurm/train_harmo.sh [key=value ...]
# Size the job at submit time, e.g. one CPU-only node with two ranks:
#   CONFIG=configs/train/harmo_tiny.yaml sbatch --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --gpus-per-node=0 slurm/train_harmo.sh device=cpu
#SBATCH --job-name=harmo-clip
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --signal=USR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
exec "$SLURM_SUBMIT_DIR/slurm/launch.sh" "${CONFIG:-configs/train/harmo_vitb16.yaml}" "$@"
