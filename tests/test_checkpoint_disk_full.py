"""A checkpoint write that runs out of disk (a real tmpfs under the run folder): every rank ends
in one line naming the checkpoint and the one to resume from, no rank hangs, ``latest`` still
names the last complete checkpoint, and once space is freed the run removes the torn tag and
resumes to the losses of a run that never stopped."""

import json

import pytest
from helpers import small_disk, torchrun

pytestmark = pytest.mark.integration
CONFIG = "configs/train/beta_tiny.yaml"
COMMON = ("zero_stage=2", "steps=6", "optim.warmup_steps=2", "checkpoint.every=3")
COMMON += ("data.batch_size=8", "data.workers=1", "log_every=1")


def losses(run_dir) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def test_a_full_disk_at_a_checkpoint_keeps_latest_and_the_run_resumes(generated_shards, tmp_path):
    data = f"data.manifests=[{generated_shards}]"
    whole = tmp_path / "whole"
    torchrun(CONFIG, data, f"output={whole}", *COMMON)
    one = sum(f.stat().st_size for f in (whole / "checkpoints/step-00000003").rglob("*") if f.is_file())

    with small_disk(tmp_path / "disk", int(one * 1.5)) as disk:  # room for one checkpoint, not two
        run_dir = disk.folder / "run"
        full = torchrun(CONFIG, data, f"output={run_dir}", *COMMON, check=False)
        assert full.returncode != 0
        ours = [line for line in full.stderr.splitlines() if line.startswith(("[rank", "incomplete"))]
        assert not [line for line in ours if "Traceback" in line], full.stderr[-4000:]
        failed = [line for line in full.stderr.splitlines() if line.startswith("incomplete: checkpoint ")]
        assert failed and all(
            f"{run_dir}/checkpoints/step-00000006 not written (" in line
            and line.endswith("rerun to resume from step-00000003")
            for line in failed
        ), full.stderr[-4000:]
        assert (run_dir / "checkpoints/latest").read_text() == "step-00000003"

        disk.grow(one * 8)
        resumed = torchrun(CONFIG, data, f"output={run_dir}", *COMMON)
        assert "step-00000006: a checkpoint that was never completed" in resumed.stderr
        assert "resumed from" in resumed.stderr and "finished at step 6" in resumed.stdout
        got, expected = losses(run_dir), losses(whole)
        assert [got[s] for s in (4, 5, 6)] == pytest.approx([expected[s] for s in (4, 5, 6)], abs=1e-6)
