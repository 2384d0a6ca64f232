"""The README's main command, shortened: a fresh work folder → corpus → data prep on a local Ray →
the four objectives trained with ZeRO-2 on 2 CPU ranks → one evaluation report."""

import hashlib
import json
import subprocess
import sys

import pytest
from helpers import REPO

from pipeline.__main__ import main

pytestmark = pytest.mark.integration


def test_demo_runs_end_to_end_and_writes_the_comparison_report(tmp_path, capsys):
    work = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "demo",
            "--workdir",
            str(work),
            "--records",
            "96",
            "--heldout",
            "32",
            "--train-steps",
            "3",
            "--pretrain-steps",
            "3",
            "samples_per_shard=32",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "verify train: OK" in result.stdout and "verify heldout: OK" in result.stdout
    report = json.loads((work / "report/metrics.json").read_text())
    assert list(report["models"]) == ["pretrained", "clip", "beta", "harmo", "beta+harmo"]
    assert report["data"]["images"] == 32
    note = report["config"]["note"]  # what this scale can show, first in the report
    assert (
        note.startswith("Each objective is fine-tuned 3 steps on 96 generated images here")
        and "demo-long" in note
    )
    for name, model in report["models"].items():
        assert (work / "runs" / name.replace("+", "_") / "export/open_clip_model.safetensors").exists()
        assert "roi" in model["boxes"] and ("head" in model["boxes"]) == ("harmo" in name)
    assert (work / "report/training_curves.png").exists() and (work / "report/report.html").exists()

    # Lineage: the report names the held-out set it scored and, per model, the dataset it was trained on.
    train_sha = hashlib.sha256((work / "shards/train/dataset.json").read_bytes()).hexdigest()
    lineage = report["lineage"]
    assert lineage["datasets"][0]["path"] == str(work / "shards/heldout")
    start = str(work / "runs/pretrained/export")
    for name, checkpoint in lineage["checkpoints"].items():
        assert [d["sha256"] for d in checkpoint["datasets"]] == [train_sha]
        model = checkpoint["config"]["model"]
        if name == "pretrained":  # the papers' protocol: an aligned 77-token CLIP first
            assert checkpoint["config"]["objective"]["name"] == "clip" and model["context_length"] == 77
        else:  # then each objective fine-tuned from it at 248 tokens
            assert checkpoint["config"]["objective"]["name"] == name
            assert model["pretrained"] == start and model["context_length"] == 248
    assert main(["lineage", str(work / "runs/beta_harmo/export")]) == 0
    printed = capsys.readouterr().out
    assert f"dataset.json sha256 {train_sha}" in printed and "objective beta+harmo" in printed
