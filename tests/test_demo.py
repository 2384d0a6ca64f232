"""The README's main command, shortened: a fresh work folder → corpus → data prep on a local Ray →
the four objectives trained with ZeRO-2 on 2 CPU ranks → one evaluation report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


def test_demo_runs_end_to_end_and_writes_the_comparison_report(tmp_path):
    work = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "pipeline", "demo", "--workdir", str(work), "--records", "96",
                             "--heldout", "32", "--train-steps", "3", "samples_per_shard=32"],
                            cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "verify train: OK" in result.stdout and "verify heldout: OK" in result.stdout
    report = json.loads((work / "report/metrics.json").read_text())
    assert list(report["models"]) == ["clip", "beta", "harmo", "beta+harmo"]
    assert report["data"]["images"] == 32
    for name, model in report["models"].items():
        assert (work / "runs" / name.replace("+", "_") / "export/open_clip_model.pt").exists()
        assert "roi" in model["boxes"] and ("head" in model["boxes"]) == ("harmo" in name)
    assert (work / "report/training_curves.png").exists() and (work / "report/report.html").exists()
