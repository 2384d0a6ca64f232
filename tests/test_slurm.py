"""The Slurm scripts, unchanged, on a real one-node Slurm: CPU ranks over gloo.

Needs root the first time (the fixture installs and starts slurm-wlm + munge with
slurm/local/start-local-slurm.sh), or a running Slurm whose node has 2 free CPUs.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def slurm():
    if shutil.which("sinfo") is None or subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        if os.geteuid() != 0:
            pytest.skip("no running Slurm, and starting one needs root (slurm/local/start-local-slurm.sh)")
        subprocess.run(["bash", REPO / "slurm/local/start-local-slurm.sh"], check=True, capture_output=True,
                       timeout=600)


def sbatch(script: str, out: Path, *overrides: str, wait: bool) -> str:
    env = {**os.environ, "CONFIG": "configs/train/beta_tiny.yaml" if "beta" in script else
           "configs/train/harmo_tiny.yaml", "OUTPUT": str(out), "PYTHON": sys.executable}
    cmd = ["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0",
           "--cpus-per-task=1", f"--output={out}.slurm-%j.out", *(["--wait"] if wait else []),
           script, "device=cpu", *overrides]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr + _log(out)[-4000:]
    return result.stdout.strip().split(";")[0]


def job_state(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def _log(out: Path) -> str:
    return "".join(p.read_text() for p in out.parent.glob(f"{out.name}.slurm-*.out"))


def _steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def test_sbatch_train_beta_completes_with_a_checkpoint(slurm, tmp_path, generated_shards):
    out = tmp_path / "beta"
    sbatch("slurm/train_beta.sh", out, f"data.manifests=[{generated_shards}]", "steps=4",
           "data.batch_size=8", "data.workers=1", "checkpoint.every=2", "log_every=1", wait=True)
    log = _log(out)
    assert "2 tasks on localhost" in log and "finished at step 4" in log, log[-4000:]
    assert (out / "checkpoints/step-00000004").is_dir() and (out / "export/open_clip_model.pt").exists()
    assert _steps(out) == [1, 2, 3, 4]


def test_sigusr1_checkpoints_requeues_and_finishes(slurm, tmp_path, generated_shards):
    out = tmp_path / "harmo"
    job = sbatch("slurm/train_harmo.sh", out, f"data.manifests=[{generated_shards}]", "steps=60",
                 "data.batch_size=8", "data.workers=1", "checkpoint.every=1000", "log_every=1", wait=False)
    deadline = time.time() + 600
    while len(_steps(out)) < 3:
        assert time.time() < deadline and job_state(job)["JobState"] in ("PENDING", "RUNNING"), _log(out)[-4000:]
        time.sleep(1)
    subprocess.run(["scancel", "--signal=USR1", job], check=True)

    while job_state(job)["JobState"] != "COMPLETED":
        state = job_state(job)
        assert time.time() < deadline and state["JobState"] in ("PENDING", "RUNNING", "COMPLETING"), _log(out)[-4000:]
        if state["JobState"] == "PENDING" and state.get("Reason") == "BeginTime":
            # Slurm holds a requeued job for ~2 minutes; start it now rather than wait
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
        time.sleep(1)
    log = _log(out)
    assert "received SIGUSR1" in log and f"requeued Slurm job {job}" in log and "resumed from" in log, log[-4000:]
    assert "finished at step 60" in log
    steps = _steps(out)
    assert steps[-1] == 60 and len(steps) == len(set(steps)) == 60  # every step once: no step lost or redone
    assert job_state(job).get("Restarts") == "1"
