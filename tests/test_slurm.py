"""The Slurm scripts, unchanged, on a real one-node Slurm: CPU ranks over gloo.

Needs root the first time (the fixture installs and starts slurm-wlm + munge with
slurm/local/start-local-slurm.sh), or a running Slurm whose node has 2 free CPUs.
"""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from slurm_jobs import job_log, job_state, logged_steps, sbatch

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def slurm():
    if shutil.which("sinfo") is None or subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        if os.geteuid() != 0:
            pytest.skip("no running Slurm, and starting one needs root (slurm/local/start-local-slurm.sh)")
        subprocess.run(
            ["bash", REPO / "slurm/local/start-local-slurm.sh"], check=True, capture_output=True, timeout=600
        )


def test_sbatch_train_beta_completes_with_a_checkpoint(slurm, tmp_path, generated_shards):
    out = tmp_path / "beta"
    sbatch(
        "slurm/train_beta.sh",
        out,
        f"data.manifests=[{generated_shards}]",
        "steps=4",
        "data.batch_size=8",
        "data.workers=1",
        "checkpoint.every=2",
        "log_every=1",
        wait=True,
    )
    log = job_log(out)
    assert "2 tasks on localhost" in log and "finished at step 4" in log, log[-4000:]
    assert (out / "checkpoints/step-00000004").is_dir() and (out / "export/open_clip_model.pt").exists()
    assert logged_steps(out) == [1, 2, 3, 4]


def test_sigusr1_checkpoints_requeues_and_finishes(slurm, tmp_path, generated_shards):
    out = tmp_path / "harmo"
    job = sbatch(
        "slurm/train_harmo.sh",
        out,
        f"data.manifests=[{generated_shards}]",
        "steps=60",
        "data.batch_size=8",
        "data.workers=1",
        "checkpoint.every=1000",
        "log_every=1",
        wait=False,
    )
    deadline = time.time() + 600
    while len(logged_steps(out)) < 3:
        running = job_state(job)["JobState"] in ("PENDING", "RUNNING")
        assert time.time() < deadline and running, job_log(out)[-4000:]
        time.sleep(1)
    subprocess.run(["scancel", "--signal=USR1", job], check=True)

    while job_state(job)["JobState"] != "COMPLETED":
        state = job_state(job)
        alive = state["JobState"] in ("PENDING", "RUNNING", "COMPLETING")
        assert time.time() < deadline and alive, job_log(out)[-4000:]
        if state["JobState"] == "PENDING" and state.get("Reason") == "BeginTime":
            # Slurm holds a requeued job for ~2 minutes; start it now rather than wait
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
        time.sleep(1)
    log = job_log(out)
    assert "received SIGUSR1" in log and f"requeued Slurm job {job}" in log, log[-4000:]
    assert "resumed from" in log, log[-4000:]
    assert "finished at step 60" in log
    steps = logged_steps(out)
    assert steps[-1] == 60 and len(steps) == len(set(steps)) == 60  # every step once: no step lost or redone
    assert job_state(job).get("Restarts") == "1"
