"""Preemption: turn SIGUSR1/SIGTERM into "save at the next step boundary, then requeue".

Slurm sends SIGUSR1 ahead of the time limit (``#SBATCH --signal=USR1@<s>``) and SIGTERM on
preemption or scancel. The handler only sets a flag; the loop checks it between steps, all
ranks agree (one rank may get the signal first), save, and rank 0 asks Slurm to requeue.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class PreemptionFlag:
    def __init__(self) -> None:
        self.received: int | None = None
        for sig in SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame) -> None:
        if self.received is None:
            log.warning("received %s: will checkpoint at the end of this step", signal.Signals(signum).name)
        self.received = signum

    @property
    def requested(self) -> bool:
        return self.received is not None


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
