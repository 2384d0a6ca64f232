"""The GPU check (benchmarks/gpu_check.sh): its CPU smoke run in CI, so the script cannot rot
between GPU loans, and what a CPU never exercises: lowering the batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # a script's module

from gpu_check import REPO, lowered_on_oom


@pytest.mark.integration
def test_cpu_smoke_measures_every_part_without_ray_or_spacy(tmp_path):
    """As on a GPU machine (gpu_bundle.sh): the dataset made beforehand with ``--prepare``, then
    the check reading it with Ray and spaCy unimportable."""
    cores = len(os.sched_getaffinity(0))
    prepare = [sys.executable, "benchmarks/gpu_check.py", "--cpu-smoke", "--prepare", str(tmp_path / "data")]
    made = subprocess.run(
        [*prepare, f"--shards={cores}"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert made.returncode == 0, made.stderr[-4000:]
    absent = tmp_path / "absent"
    absent.mkdir()
    for module in ("ray", "spacy"):
        (absent / f"{module}.py").write_text(f"raise ImportError('no {module} on the GPU machine')\n")
    out = tmp_path / "check.json"
    result = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--cpu-smoke", "--data", made.stdout.strip(), "--out", str(out)],
        cwd=REPO,
        env={**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(absent)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["failed"] == [] and "failed: nothing" in result.stdout
    assert report["device"] == "cpu" and report["precision"] == "fp32" and report["zero_stage"] == 2
    for name in ("clip", "beta", "harmo", "beta+harmo"):
        part = report["objectives"][name]
        assert part["batch_size"] == 8 and part["batch_note"] is None
        assert part["samples_per_s"] > 0 and part["text_tokens_per_s"] > 0 and part["gflops_per_sample"] > 0
        assert 0 < part["padding"] <= 1
        assert part["mfu"] is None and part["peak_memory_gib"] is None  # no bf16 peak, no CUDA memory
    flops = {name: report["objectives"][name]["gflops_per_sample"] for name in ("clip", "beta")}
    assert flops["beta"] > flops["clip"]  # β encodes every text slot, clip only the caption
    assert report["open_clip"]["samples_per_s"] > 0 and report["clip_vs_open_clip"] > 0
    assert report["detector"]["images_per_s"] > 0 and report["detector"]["batch_size"] == 8
    assert report["loader"]["samples_per_s"] > 0
    assert report["loader"]["workers"] == len(os.sched_getaffinity(0))
    assert report["mfu_formula"].startswith("MFU = samples/s × FLOPs per sample / peak")
    assert torch.__version__.startswith(report["packages"]["torch"]) and report["code_version"]


def test_batch_is_halved_only_while_memory_runs_out(capsys):
    def measure(batch_size: int) -> dict:
        if batch_size > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return {"samples_per_s": 1.0}

    result = lowered_on_oom(measure, 64, torch.device("cpu"), "beta")
    assert result == {
        "samples_per_s": 1.0,
        "batch_size": 16,
        "batch_note": "out of memory at batch 64, 32; lowered to 16",
    }
    assert capsys.readouterr().out.splitlines() == [
        "note: beta: out of memory at batch 64; trying 32",
        "note: beta: out of memory at batch 32; trying 16",
    ]
    assert lowered_on_oom(measure, 8, torch.device("cpu"), "clip")["batch_note"] is None
