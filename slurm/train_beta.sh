#!/bin/bash
# β-CLIP training: sbatch slurm/train_beta.sh [key=value ...]
# Size the job at submit time, e.g. one CPU-only node with two ranks:
#   CONFIG=configs/train/beta_tiny.yaml sbatch --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --gpus-per-node=0 slurm/train_beta.sh device=cpu
#SBATCH --job-name=beta-clip
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --signal=USR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
exec "$SLURM_SUBMIT_DIR/slurm/launch.sh" "${CONFIG:-configs/train/beta_vitb16.yaml}" "$@"
