"""Submitting the repo's sbatch scripts from tests, and reading what the jobs left behind."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sbatch(
    script: str,
    out: Path,
    *overrides: str,
    wait: bool,
    nodes: int = 1,
    tasks_per_node: int = 2,
    env: dict[str, str] | None = None,
) -> str:
    """Submit ``script`` as a user would (CPU ranks, tiny preset); returns the job id."""
    env = {
        **(env or os.environ),
        "CONFIG": "configs/train/beta_tiny.yaml" if "beta" in script else "configs/train/harmo_tiny.yaml",
        "OUTPUT": str(out),
        "PYTHON": sys.executable,
    }
    cmd = [
        "sbatch",
        "--parsable",
        f"--nodes={nodes}",
        f"--ntasks-per-node={tasks_per_node}",
        "--gpus-per-node=0",
        "--cpus-per-task=1",
        f"--output={out}.slurm-%j.out",
        *(["--wait"] if wait else []),
        script,
        "device=cpu",
        *overrides,
    ]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr + job_log(out)[-4000:]
    return result.stdout.strip().split(";")[0]


def job_state(job: str, env: dict[str, str] | None = None) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=env).stdout
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def job_log(out: Path) -> str:
    """Every job's output for the run folder ``out``, oldest job first."""
    return "".join(
        p.read_text()
        for p in sorted(
            out.parent.glob(f"{out.name}.slurm-*.out"),
            key=lambda p: int(p.name.rsplit("-", 1)[1].split(".")[0]),
        )
    )


def logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []
