"""Ablations of the demo's fine-tuning: each run one change from the demo's preset, same data, same start.

    python scripts/ablate.py runs/demo runs/ablations \
        --run "beta-1-head beta model.pooler_heads=1" \
        --run "harmo-lrc-only harmo objective.lambda_gr=0" [--steps 200] [--seed 0]

WORKDIR is a finished ``python -m pipeline demo`` folder (``--seed`` must be the demo's): each
``--run "NAME OBJECTIVE [key=value ...]"`` fine-tunes the demo's pretrained start on its training
shards with ``configs/train/beta_tiny.yaml`` and those keys changed, into ``OUT/runs/NAME`` (a
run whose export exists is kept, so an interrupted sweep continues). Then every run, and the
demo's own fine-tuned models where they trained ``--steps`` too, are evaluated together on the
held-out shards, and ``OUT/table.md`` lists, per run, what docs/evaluation.md's ablation tables
show: R@1, box top-1 and FG-OVD-style hard along each region path, the pooler diagnostic, and the
loss terms at the last step. A run named ``clip`` is the baseline in place of the demo's.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from pipeline.config import load_config
from pipeline.demo import EVAL_PRESET, OBJECTIVES, train_run
from pipeline.eval import EvalConfig, evaluate

TERMS = ("clip", "beta_cal", "lrc", "gr")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("workdir", type=Path, help="a finished demo folder")
    parser.add_argument("out", type=Path)
    parser.add_argument("--run", action="append", default=[], help='"NAME OBJECTIVE [key=value ...]"')
    parser.add_argument("--steps", type=int, default=200, help="fine-tuning steps of every run")
    parser.add_argument("--seed", type=int, default=0, help="the demo's --seed")
    args = parser.parse_args(argv)
    work, out = args.workdir.resolve(), args.out.resolve()
    start = work / "runs/pretrained/export"
    if not start.is_dir():
        print(f"ablate: {start} not found: run `python -m pipeline demo --workdir {work}` first")
        return 2
    runs = {}
    for spec in args.run:
        name, objective, *keys = shlex.split(spec)
        if objective not in OBJECTIVES:
            print(f"ablate: --run {name}: objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
            return 2
        runs[name] = (objective, keys)
    for name, (objective, keys) in runs.items():
        run_dir = out / "runs" / name
        if (run_dir / "export").is_dir():
            continue
        extra = [f"model.pretrained={start}", f"seed={args.seed}", f"data.seed={args.seed}", *keys]
        if train_run(run_dir, objective, work / "shards/train", args.steps, extra) is None:
            print(f"ablate: run {name} failed")
            return 1
    demo_runs = {o: work / "runs" / o.replace("+", "_") for o in OBJECTIVES}
    checkpoints = {o: p for o, p in demo_runs.items() if _last_step(p) == args.steps}
    checkpoints.update({name: out / "runs" / name for name in runs})
    given = {
        "data": str(work / "shards/heldout"),
        "out": str(out / "report"),
        "checkpoints": [f"{n}={p}" for n, p in checkpoints.items()],
    }
    report = evaluate(
        load_config(EvalConfig, EVAL_PRESET, [f"{k}={json.dumps(v)}" for k, v in given.items()])
    )
    metrics = json.loads((report / "metrics.json").read_text())["models"]
    changes = {o: "demo preset" for o in demo_runs} | {
        n: " ".join(k) or "demo preset" for n, (_, k) in runs.items()
    }
    table = ablation_table(metrics, checkpoints, changes)
    (out / "table.md").write_text(table + "\n")
    print(table)
    return 0


def ablation_table(metrics: dict, checkpoints: dict[str, Path], changes: dict[str, str]) -> str:
    """One markdown row per model: its change, retrieval (and mean R@1 against the demo's clip),
    boxes and FG-OVD-style hard per region path, the pooler diagnostic, the last logged terms."""
    clip = metrics.get("clip", {}).get("retrieval")
    rows = [
        "| run | change | I2T / T2I R@1 | mean R@1 − clip | box top-1 roi / head | FG-OVD hard roi / head "
        "| pooled cosine / entropy | last step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in metrics.items():
        r = m["retrieval"]
        mean = (r["i2t_R@1"] + r["t2i_R@1"]) / 2
        delta = f"{mean - (clip['i2t_R@1'] + clip['t2i_R@1']) / 2:+.1f}" if clip else ""
        boxes = " / ".join(_fmt(m["boxes"].get(p, {}).get("top1")) for p in ("roi", "head"))
        hard = " / ".join(_fmt(m["fgovd"].get(p, {}).get("hard")) for p in ("roi", "head"))
        pooler = m.get("pooler") or {}
        pooled = f"{pooler['pooled_cosine']:.3f} / {pooler['attention_entropy']:.3f}" if pooler else ""
        rows.append(
            f"| {name} | {changes[name]} | {r['i2t_R@1']:.1f} / {r['t2i_R@1']:.1f} | {delta} | {boxes} "
            f"| {hard} | {pooled} | {_last_terms(checkpoints[name])} |"
        )
    return "\n".join(rows)


def _last_logged(run: Path) -> dict:
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "export").is_dir() else []
    return json.loads(lines[-1]) if lines else {}


def _last_step(run: Path) -> int | None:
    """The demo's models are rows only where they trained as long as the runs (a fair comparison)."""
    return _last_logged(run).get("step")


def _last_terms(run: Path) -> str:
    last = _last_logged(run)
    return ", ".join(f"{t} {last[t]:.2f}" for t in TERMS if t in last)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    sys.exit(main())
