"""Preemption: turn SIGUSR1/SIGTERM into "save at a step boundary soon, then requeue".

Slurm sends SIGUSR1 ahead of the time limit (``#SBATCH --signal=USR1@<s>``) and SIGTERM on
preemption or scancel. The handler only sets a flag. Every ``check_every`` steps the ranks
agree on it (one rank may get the signal first: one all-reduce, which also waits for the
device, so not every step); then all save, and rank 0 asks Slurm to requeue.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess

import torch

from pipeline.training.distributed import any_rank

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class Preemption:
    def __init__(self, device: torch.device, check_every: int) -> None:
        self.device, self.check_every = device, check_every
        self.received: int | None = None
        for sig in SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame) -> None:
        if self.received is None:
            log.warning(
                "received %s: will checkpoint within %d steps", signal.Signals(signum).name, self.check_every
            )
        self.received = signum

    def agreed(self, step: int) -> bool:
        """True on every rank, at a step that checks, once any rank has received a signal."""
        return step % self.check_every == 0 and any_rank(self.received is not None, self.device)


def requeue() -> bool:
    """``scontrol requeue $SLURM_JOB_ID`` when running as a Slurm job; False outside Slurm."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        log.warning("not a Slurm job: stopping after the checkpoint, nothing to requeue")
        return False
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        log.error("scontrol requeue %s failed: %s", job, result.stderr.strip())
        return False
    log.warning("requeued Slurm job %s; it resumes from the checkpoint", job)
    return True
