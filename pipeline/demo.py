"""The README's main job on the embedded default: generate a corpus, run data prep on a
local Ray, verify the result and print the manifest summary."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.config import load_config
from pipeline.prep import PrepConfig, run
from pipeline.shards import check
from pipeline.synthetic import SyntheticConfig, write_corpus

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
NUM_RECORDS, NUM_BROKEN = 2000, 48


def run_demo(workdir: str, overrides: list[str]) -> int:
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
    print(f"\nshards and manifest: {manifest.root}")
    return 1 if problems else 0
