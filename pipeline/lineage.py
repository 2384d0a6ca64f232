"""Lineage: what a checkpoint or a report was made from — the datasets (path + sha256 of their
``dataset.json``), the config, the code version and the package versions.

Training writes ``lineage.json`` into the run folder, every checkpoint and the export; an
evaluation report carries it for its dataset and each checkpoint it scored. ``python -m pipeline
lineage PATH`` prints it. A dataset's ``dataset.json`` is written once, last, so its sha256 names
exactly one set of shards: that is how a manifest's consumers find the models trained on it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline import __version__, storage
from pipeline.shards.manifest import MANIFEST_FILE, load_manifest

LINEAGE_FILE = "lineage.json"
PACKAGES = (
    "torch",
    "torchvision",
    "open_clip_torch",
    "deepspeed",
    "ray",
    "webdataset",
    "spacy",
    "pyarrow",
    "numpy",
    "transformers",
)


def dataset_ref(path: str) -> dict[str, Any]:
    """A dataset as lineage names it: where, which bytes of ``dataset.json``, what it holds."""
    manifest = load_manifest(path)
    body = storage.read_bytes(f"{manifest.root}/{MANIFEST_FILE}")
    where = manifest.root if storage.is_s3(manifest.root) else str(Path(manifest.root).resolve())
    return {
        "path": where,
        "name": manifest.name,
        "sha256": hashlib.sha256(body).hexdigest(),
        "run_id": manifest.data.get("run_id"),
        "samples": manifest.num_samples,
    }


def make_lineage(datasets: Sequence[str], config: dict[str, Any]) -> dict[str, Any]:
    return {"datasets": [dataset_ref(d) for d in datasets], "config": config, **environment()}


def environment() -> dict[str, Any]:
    versions = {name: _version(name) for name in PACKAGES}
    return {
        "code_version": code_version(),
        "python": platform.python_version(),
        "packages": {name: v for name, v in versions.items() if v},
    }


def code_version() -> str:
    """The git commit of this checkout when there is one, else the package version."""
    try:
        out = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        out = None
    commit = out.stdout.strip() if out and out.returncode == 0 else ""
    return f"pipeline {__version__}" + (f" ({commit})" if commit else "")


def write_lineage(folder: Path, lineage: dict[str, Any]) -> None:
    (folder / LINEAGE_FILE).write_text(json.dumps(lineage, indent=1))


def read_lineage(path: str | Path) -> dict[str, Any]:
    """The lineage of a run folder, a checkpoint, an export, or an evaluation report folder."""
    path = Path(path)
    for candidate in (path / LINEAGE_FILE, path / "export" / LINEAGE_FILE, path / "metrics.json"):
        if candidate.exists():
            data = json.loads(candidate.read_text())
            if candidate.name != "metrics.json":
                return data
            if "lineage" in data:  # a report
                return data["lineage"]
    raise FileNotFoundError(
        f"{path}: no {LINEAGE_FILE} (not a run, checkpoint, export or report of ours, "
        "or one written before lineage was recorded)"
    )


def describe(lineage: dict[str, Any]) -> str:
    """A human summary; ``--json`` prints the whole record."""
    lines = [f"code      {lineage['code_version']}  (python {lineage['python']})"]
    for d in lineage.get("datasets", []):
        lines.append(f"dataset   {d['path']}  {d['samples']} samples  dataset.json sha256 {d['sha256']}")
    for name, checkpoint in lineage.get("checkpoints", {}).items():
        lines.append(f"model     {name}: {checkpoint.get('path', '')}")
        lines += [
            f"            trained on {d['path']} (sha256 {d['sha256'][:16]}…)"
            for d in checkpoint.get("datasets", [])
        ]
    config = lineage.get("config", {})
    if "objective" in config:
        lines.append(
            f"training  objective {config['objective']['name']}, model {config['model']['name']}, "
            f"{config['steps']} steps, ZeRO-{config['zero_stage']}"
        )
    lines.append("packages  " + ", ".join(f"{k} {v}" for k, v in lineage["packages"].items()))
    return "\n".join(lines)


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
