"""The README's main job on the embedded default, end to end on one machine:

1. generate a training corpus and a held-out one (different images, same generator);
2. data prep on a local Ray for both, shards verified against their manifests;
3. the papers' protocol: pretrain the tiny model with ``clip`` at a 77-token context, then
   fine-tune it with each objective — clip, beta, harmo, beta+harmo — for the same steps on the
   same data at 248 tokens (Long-CLIP), DeepSpeed ZeRO-2 on two CPU ranks (gloo, torchrun);
4. evaluate all of them, and the pretrained start, on the held-out shards: one report.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import ray

from pipeline.config import ConfigError, load_config
from pipeline.eval import EvalConfig, evaluate
from pipeline.objectives.config import NAMES
from pipeline.prep.config import PrepConfig
from pipeline.prep.job import run
from pipeline.shards import check
from pipeline.synthetic import SyntheticConfig, write_corpus
from pipeline.training.config import TrainConfig

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
TRAIN_CONFIG = (
    "configs/train/beta_tiny.yaml"  # K = 36 text slots and 16 regions: what every objective may read
)
OBJECTIVES = NAMES
EVAL_PRESET = REPO / "configs/eval/synthetic.yaml"  # the generated corpus's FG-OVD attributes


@dataclass(frozen=True)
class Scale:
    records: int  # generated training images
    train_steps: int  # fine-tuning steps per objective


SCALES = {
    "demo": Scale(2000, 200),  # make demo: the whole system, end to end, in minutes
    "long": Scale(2000, 1000),  # make demo-long: the smallest that shows the objectives (docs/evaluation.md)
}


def run_demo(
    workdir: str,
    overrides: list[str],
    scale: str = "demo",
    train_steps: int | None = None,
    records: int | None = None,
    heldout: int = 300,
    objectives: tuple[str, ...] = OBJECTIVES,
    pretrain_steps: int = 200,
    seed: int = 0,
    train: tuple[str, ...] = (),
) -> int:
    """A :data:`SCALES` entry, its ``records`` and ``train_steps`` overridable. ``seed`` draws the
    generated corpus, the model's initialisation and the loader's order: a second seed is a second
    dataset and a second run of everything (docs/evaluation.md). ``train``: training keys
    (``key=value``) for every run, the pretraining too (a larger model: ``model.name=FG-Small-16``),
    checked before any work."""
    if scale not in SCALES:
        raise ConfigError(f"--scale: {scale!r} is not one of {', '.join(SCALES)}")
    load_config(TrainConfig, REPO / TRAIN_CONFIG, list(train))
    records = SCALES[scale].records if records is None else records
    train_steps = SCALES[scale].train_steps if train_steps is None else train_steps
    work = Path(workdir).resolve()
    train_set = _prepare(
        work, "train", SyntheticConfig(num_records=records, num_broken=48, seed=seed), overrides
    )
    heldout_set = _prepare(
        work, "heldout", SyntheticConfig(num_records=heldout, split="heldout", seed=seed), overrides
    )
    ray.shutdown()  # the preps' local Ray: its memory to the training runs, its threads out of here
    if train_set is None or heldout_set is None or train_steps == 0:
        return 1 if train_set is None or heldout_set is None else 0

    # Both papers fine-tune an already aligned 77-token CLIP: pretrain one, as OpenAI's stands in
    # for it at their scale, then fine-tune each objective from it at the config's context.
    seeds = [f"seed={seed}", f"data.seed={seed}", *train]
    pretrained = train_run(
        work / "runs/pretrained", "clip", train_set, pretrain_steps, ["model.context_length=77", *seeds]
    )
    if pretrained is None:
        return 1
    runs = [f"pretrained={pretrained}"]
    for objective in objectives:
        start = f"model.pretrained={pretrained / 'export'}"
        run_dir = train_run(
            work / "runs" / objective.replace("+", "_"), objective, train_set, train_steps, [start, *seeds]
        )
        if run_dir is None:
            return 1
        runs.append(f"{objective}={run_dir}")

    given = {
        "data": str(heldout_set),
        "out": str(work / "report"),
        "checkpoints": runs,
        "max_images": heldout,
        "note": scale_note(records, train_steps),
    }
    report = evaluate(
        load_config(EvalConfig, EVAL_PRESET, [f"{k}={json.dumps(v)}" for k, v in given.items()])
    )
    print((report / "report.md").read_text())
    print(f"report: {report / 'report.html'}")
    return 0


def scale_note(records: int, train_steps: int) -> str:
    """The report's first paragraph: what a demo of this size can show (docs/evaluation.md,
    "Which scale shows what", measured on two seeds)."""
    where = 'docs/evaluation.md, "Which scale shows what"'
    long = SCALES["long"]
    here = f"Each objective is fine-tuned {train_steps:,} steps on {records:,} generated images here"
    if records < long.records or train_steps < long.train_steps:
        return (
            f"{here}: enough to show that the whole system works end to end, not what the objectives "
            "are for (one run's R@1 moves by about 2.5 points with the seed alone). `make demo-long` "
            f"({long.records:,} images, {long.train_steps:,} steps, about 30 minutes on 2 cores) is the "
            f"smallest scale at which the comparison with clip means something ({where})."
        )
    return (
        f"{here}, at or past the smallest scale at which the comparison with clip means something on "
        f"a CPU; it still says nothing about ViT-B/16 at the papers' scale ({where})."
    )


def train_run(run_dir: Path, objective: str, train_set: Path, steps: int, extra: list[str]) -> Path | None:
    """One training run of the tiny model: ZeRO-2 on two CPU ranks (torchrun); None if it fails."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "train/train.py",
        "--config",
        TRAIN_CONFIG,
        "device=cpu",
        f"output={run_dir}",
        f"objective.name={objective}",
        f"data.manifests=[{train_set}]",
        f"steps={steps}",
        "checkpoint.resume=false",
        *extra,
    ]
    print(f"\ntraining {objective}:", " ".join(cmd[2:]), flush=True)
    # Ctrl-C must reach this process as KeyboardInterrupt while it waits (seen once, with the
    # preps' Ray still up in it: the demo ended 1, not 130): Python's handler, at the C level too.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if subprocess.run(cmd, check=False, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode:
        return None
    return run_dir


def _prepare(work: Path, split: str, synthetic: SyntheticConfig, overrides: list[str]) -> Path | None:
    """Generate the split's corpus (once) and run data prep on it; None if the shards fail to verify."""
    corpus = work / "corpus" / split
    if not (corpus / "records.jsonl").exists():
        log.info("generated %s", write_corpus(str(corpus), synthetic))
    cfg = load_config(
        PrepConfig,
        REPO / "configs/prep/default.yaml",
        [
            f"input.index={corpus / 'records.jsonl'}",
            f"output={work / 'shards' / split}",
            "existing_output=overwrite",
            *overrides,
        ],
    )
    manifest = run(cfg)
    problems = check.verify(manifest)
    print(check.inspect(manifest))
    print(f"verify {split}: {'OK' if not problems else problems}\n", flush=True)
    return None if problems else Path(manifest.root)
