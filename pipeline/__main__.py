"""``python -m pipeline``: the tools around the two jobs.

python -m pipeline manifest inspect|verify|validate PATH
python -m pipeline synth OUT [key=value ...]     # generate a corpus (SyntheticConfig keys)
python -m pipeline eval [--data DATASET] [--benchmark NAME=PATH ...] --checkpoint [NAME=]SPEC ... --out DIR
python -m pipeline export CHECKPOINT OUT          # a run (its latest) or checkpoint → open_clip weights
python -m pipeline lineage PATH [--json]         # what a run, checkpoint, export or report was made from
python -m pipeline demo [--workdir DIR]          # the README's main job: prep, train 4 objectives, eval
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from pipeline.config import UserError, interrupted_status, load_config, setup_logging, user_error_status

if TYPE_CHECKING:
    from pipeline.eval import EvalConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    manifest = sub.add_parser("manifest", help="inspect, verify or validate a dataset")
    manifest.add_argument("action", choices=("inspect", "verify", "validate"))
    manifest.add_argument("path", help="dataset folder or its dataset.json")
    synth = sub.add_parser("synth", help="write a generated corpus (images + records.jsonl)")
    synth.add_argument("out")
    synth.add_argument("overrides", nargs="*", help="SyntheticConfig key=value")
    ev = sub.add_parser("eval", help="retrieval, box classification, FG-OVD scoring: one report")
    ev.add_argument("--data", help="dataset folder or dataset.json (data prep output), local or s3://")
    ev.add_argument(
        "--checkpoint",
        "--model",
        action="append",
        default=[],
        dest="checkpoints",
        help="[name=]run folder | export folder | openclip:NAME[:TAG]; repeat to compare",
    )
    ev.add_argument(
        "--benchmark",
        action="append",
        default=[],
        dest="benchmarks",
        help="NAME=PATH, a benchmark as distributed: urban1k, sharegpt4v[:10k], docci, flickr30k, coco",
    )
    ev.add_argument("--out", help="report folder")
    ev.add_argument("--config", help="YAML file with EvalConfig keys (pipeline/eval/config.py)")
    ev.add_argument("overrides", nargs="*", help="EvalConfig key=value")
    export = sub.add_parser("export", help="consolidate a ZeRO checkpoint into open_clip weights + heads")
    export.add_argument("checkpoint", help="run folder (its latest checkpoint) or run/checkpoints/step-N")
    export.add_argument("out")
    lineage = sub.add_parser(
        "lineage",
        help="datasets (sha256), config, code and package versions behind a "
        "run, checkpoint, export or evaluation report",
    )
    lineage.add_argument("path")
    lineage.add_argument("--json", action="store_true", help="the whole record")
    demo = sub.add_parser(
        "demo",
        help="generate data, prep it on a local Ray, train the four objectives, evaluate them: one report",
    )
    demo.add_argument("--workdir", default="runs/demo")
    demo.add_argument("--scale", default="demo", help="demo: minutes; long: what the objectives are for")
    demo.add_argument(
        "--train-steps", type=int, help="per objective (default: the scale's); 0: data prep only"
    )
    demo.add_argument("--pretrain-steps", type=int, default=200, help="the clip model they start from")
    demo.add_argument("--records", type=int, help="generated training images (default: the scale's)")
    demo.add_argument("--heldout", type=int, default=300, help="generated held-out images (evaluation)")
    demo.add_argument("--seed", type=int, default=0, help="draws the data, the models and their order")
    demo.add_argument(
        "--train",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a training key for every run, the pretraining too (model.name=FG-Small-16)",
    )
    demo.add_argument("overrides", nargs="*", help="PrepConfig key=value")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        if args.command == "manifest":
            return _manifest(args.action, args.path)
        if args.command == "eval":
            return _eval(args)
        if args.command == "lineage":
            from pipeline.lineage import describe, read_lineage

            record = read_lineage(args.path)
            print(json.dumps(record, indent=1) if args.json else describe(record))
            return 0
        if args.command == "export":
            from pipeline.training.export import export_checkpoint

            print(export_checkpoint(args.checkpoint, args.out))
            return 0
        if args.command == "synth":
            from pipeline.synthetic import SyntheticConfig, write_corpus

            print(write_corpus(args.out, load_config(SyntheticConfig, None, args.overrides)))
            return 0
        from pipeline.demo import run_demo

        return run_demo(
            args.workdir,
            args.overrides,
            args.scale,
            args.train_steps,
            args.records,
            args.heldout,
            pretrain_steps=args.pretrain_steps,
            seed=args.seed,
            train=tuple(args.train),
        )
    except (UserError, FileNotFoundError) as e:
        return user_error_status(e)
    except KeyboardInterrupt as e:  # Ctrl-C, or prep's Interrupted (SIGINT, SIGTERM)
        return interrupted_status(e)


def eval_config(args: argparse.Namespace) -> EvalConfig:
    """The :class:`EvalConfig` of an ``eval`` command line (flags and key=value overrides)."""
    from pipeline.eval import EvalConfig

    given = {"data": args.data, "out": args.out}
    overrides = [f"{k}={v}" for k, v in given.items() if v is not None] + list(args.overrides)
    for key in ("checkpoints", "benchmarks"):
        if getattr(args, key):
            overrides.append(f"{key}=" + json.dumps(getattr(args, key)))
    return load_config(EvalConfig, args.config, overrides)


def _eval(args: argparse.Namespace) -> int:
    from pipeline.eval import evaluate

    report = evaluate(eval_config(args))
    print(f"report: {report / 'report.html'}")
    return 0


def _manifest(action: str, path: str) -> int:
    from pipeline.shards import check, load_manifest

    m = load_manifest(path)
    samples = m.num_samples  # a manifest without its totals fails here, before any work
    if action == "inspect":
        print(check.inspect(m))
        return 0
    problems = check.verify(m) if action == "verify" else check.validate(m)
    for problem in problems:
        print(problem)
    print(
        f"{action}: {'OK' if not problems else f'{len(problems)} problem(s)'} "
        f"({len(m.shards)} shards, {samples} samples)"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
