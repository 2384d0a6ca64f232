"""The Slurm scripts, unchanged, on a real one-node Slurm: CPU ranks over gloo; the README's
CPU line as written.

Needs root the first time (the fixture installs and starts slurm-wlm + munge with
slurm/local/start-local-slurm.sh), or a running Slurm whose node has 2 free CPUs.
"""

import os
import shutil
import subprocess
import time

import pytest
from helpers import REPO, documented, job_log, job_state, logged_steps, sbatch, slurm_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def slurm():
    if shutil.which("sinfo") is None or subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        if os.geteuid() != 0:
            pytest.skip("no running Slurm, and starting one needs root (slurm/local/start-local-slurm.sh)")
        subprocess.run(
            ["bash", REPO / "slurm/local/start-local-slurm.sh"], check=True, capture_output=True, timeout=600
        )


def test_the_readme_cpu_line_trains_checkpoints_and_exports(slurm, tmp_path, generated_shards):
    """The line as a user types it, in a shell: only the demo's shards are swapped for these.
    The environment puts the run folder and the job's log in tmp_path and waits for the job."""
    line = documented(
        "README.md", "sbatch", "device=cpu", replace={"runs/demo/shards/train": str(generated_shards)}
    )
    out = tmp_path / "beta"
    env = {**slurm_env(out), "SBATCH_WAIT": "1"}
    result = subprocess.run(
        ["bash", "-c", line], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    log = job_log(out)
    assert result.returncode == 0, result.stdout + result.stderr + log[-4000:]
    assert "2 tasks on localhost" in log and "finished at step 200" in log, log[-4000:]
    assert (out / "checkpoints/step-00000200").is_dir() and (
        out / "export/open_clip_model.safetensors"
    ).exists()
    assert logged_steps(out) == list(range(10, 201, 10))  # beta_tiny.yaml: log_every 10
    assert "step 200/200: loss" in log and "sps=" not in log  # a log file gets lines, not our bar


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
