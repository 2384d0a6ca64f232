"""The README's main job on the embedded default: generate a corpus, run data prep on a local
Ray, verify the shards, then train the tiny β-CLIP model on them with DeepSpeed ZeRO-2 (two CPU
ranks over gloo, launched by torchrun) and print where the checkpoint and the export are."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from pipeline.config import load_config
from pipeline.prep import PrepConfig, run
from pipeline.shards import check
from pipeline.synthetic import SyntheticConfig, write_corpus

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
NUM_RECORDS, NUM_BROKEN = 2000, 48
TRAIN_CONFIG = "configs/train/beta_tiny.yaml"


def run_demo(workdir: str, overrides: list[str], train_steps: int) -> int:
    work = Path(workdir).resolve()
    corpus = work / "corpus"
    if not (corpus / "records.jsonl").exists():
        summary = write_corpus(str(corpus), SyntheticConfig(num_records=NUM_RECORDS, num_broken=NUM_BROKEN))
        log.info("generated %s", summary)
    cfg = load_config(PrepConfig, REPO / "configs/prep/default.yaml",
                      [f"input.index={corpus / 'records.jsonl'}", f"output={work / 'shards'}",
                       "existing_output=overwrite", *overrides])
    manifest = run(cfg)
    problems = check.verify(manifest)
    print(check.inspect(manifest))
    print(f"verify: {'OK' if not problems else problems}")
    print(f"\nshards and manifest: {manifest.root}\n")
    if problems or train_steps == 0:
        return 1 if problems else 0

    run_dir = work / "beta-tiny"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "train/train.py", "--config", TRAIN_CONFIG, "device=cpu", f"output={run_dir}",
           f"data.manifests=[{manifest.root}]", f"steps={train_steps}", "checkpoint.resume=false"]
    print("training:", " ".join(cmd[2:]), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env).returncode
