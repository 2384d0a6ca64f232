"""Submitting the data-prep entry to a running Ray cluster from tests, as a user does."""

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def submit(
    address: str, env: dict, *entry: str, runtime_env: str | None = None
) -> subprocess.CompletedProcess:
    """``ray job submit`` of ``python ENTRY...`` with this checkout as the working dir; retried
    while a fresh head's job agent is not up yet ("No available agent to submit job")."""
    extra = ["--runtime-env-json", runtime_env] if runtime_env else []
    for _ in range(30):
        job = subprocess.run(
            [
                BIN / "ray",
                "job",
                "submit",
                "--address",
                address,
                "--working-dir",
                str(REPO),
                *extra,
                "--",
                "python",
                *entry,
            ],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if "No available agent" not in job.stderr:
            return job
        time.sleep(2)
    return job
