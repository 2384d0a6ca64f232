"""Our datasets and exports where open_clip users meet them: open_clip_train trains on our shards
(their ``KEY.txt`` and ``sizes.json``) starting from our export (``local-dir:``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from helpers import REPO

from pipeline.models import TINY_MODEL, FineGrainedCLIP, ModelConfig
from pipeline.shards import load_manifest
from pipeline.training.export import write_export

# open_clip_train's sample grouping reads what webdataset 1.0 renamed (KeyError: 'fname'):
# it runs with 0.2.86 first on its path, which scripts/install.sh puts there
WEBDATASET_0_2 = REPO / ".venv/webdataset-0.2.86"


@pytest.mark.integration  # runs open_clip_train in a process
def test_open_clip_train_trains_on_our_shards_from_our_export(generated_shards, tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(name=TINY_MODEL, pretrained=None, context_length=248)
    write_export(FineGrainedCLIP(cfg, False, False), cfg, tmp_path / "export", "random init")
    manifest = load_manifest(str(generated_shards))
    last = len(manifest.shards) - 1
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "open_clip_train.main",
            f"--train-data={generated_shards}/shard-{{000000..{last:06d}}}.tar",
            "--dataset-type=webdataset",
            f"--model=local-dir:{tmp_path / 'export'}",
            "--batch-size=8",
            "--epochs=1",
            "--workers=0",
            "--precision=fp32",
            "--device=cpu",
            "--lr=1e-4",
            "--warmup=1",
            "--save-frequency=0",
            "--log-every-n-steps=1",
            f"--logs={tmp_path / 'logs'}",
            "--name=ours",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(WEBDATASET_0_2)},
        timeout=600,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    written = manifest.data["totals"]["written"]
    steps = written // 8  # open_clip_train's epoch: the samples sizes.json counts, in full batches
    assert re.search(rf"Train Epoch: 0 \[\s*{steps * 8}/{written}", log), log[-4000:]
    losses = [float(x) for x in re.findall(r"Contrastive_loss: ([0-9.]+)", log)]
    assert len(losses) >= steps and all(0 < loss < 10 for loss in losses), log[-4000:]
