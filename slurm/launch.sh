#!/bin/bash
# One training step of a Slurm job: rendezvous from the allocation, one task per GPU via srun.
# Called by slurm/train_*.sh as: slurm/launch.sh CONFIG [key=value ...]
#
# Why srun and not the DeepSpeed launcher: srun already knows the allocation (nodes, tasks,
# GPU binding), delivers Slurm's signals (--signal=USR1@...) to every task, and needs no
# hostfile or passwordless ssh between nodes. Each task reads its rank from SLURM_PROCID.
#
# Environment: OUTPUT (run folder; default runs/<job name>-<job id>, stable across requeues),
# PYTHON (default .venv/bin/python), MASTER_PORT (default derived from the job id).
set -euo pipefail
config=$1; shift
cd "${SLURM_SUBMIT_DIR:?run me from an sbatch script}"
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
output=${OUTPUT:-runs/${SLURM_JOB_NAME}-${SLURM_JOB_ID}}
echo "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): $SLURM_NTASKS tasks on $SLURM_JOB_NODELIST," \
     "rendezvous $MASTER_ADDR:$MASTER_PORT, config $config, output $output"
srun --kill-on-bad-exit=1 "${PYTHON:-.venv/bin/python}" train/train.py --config "$config" output="$output" "$@"
