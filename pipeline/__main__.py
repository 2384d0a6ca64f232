"""``python -m pipeline``: the tools around the two jobs.

    python -m pipeline manifest inspect|verify|validate PATH
    python -m pipeline synth OUT [key=value ...]     # generate a corpus (SyntheticConfig keys)
    python -m pipeline demo [--workdir DIR]          # the README's main job: prep, then training
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    manifest = sub.add_parser("manifest", help="inspect, verify or validate a dataset")
    manifest.add_argument("action", choices=("inspect", "verify", "validate"))
    manifest.add_argument("path", help="dataset folder or its dataset.json")
    synth = sub.add_parser("synth", help="write a generated corpus (images + records.jsonl)")
    synth.add_argument("out")
    synth.add_argument("overrides", nargs="*", help="SyntheticConfig key=value")
    demo = sub.add_parser("demo", help="generate a corpus, run data prep on a local Ray, train the tiny model")
    demo.add_argument("--workdir", default="runs/demo")
    demo.add_argument("--train-steps", type=int, default=200, help="0: data prep only")
    demo.add_argument("overrides", nargs="*", help="PrepConfig key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        if args.command == "manifest":
            return _manifest(args.action, args.path)
        if args.command == "synth":
            from pipeline.synthetic import SyntheticConfig, write_corpus

            print(write_corpus(args.out, load_config(SyntheticConfig, None, args.overrides)))
            return 0
        from pipeline.demo import run_demo

        return run_demo(args.workdir, args.overrides, args.train_steps)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2


def _manifest(action: str, path: str) -> int:
    from pipeline.shards import check, load_manifest

    m = load_manifest(path)
    if action == "inspect":
        print(check.inspect(m))
        return 0
    problems = check.verify(m) if action == "verify" else check.validate(m)
    for problem in problems:
        print(problem)
    print(f"{action}: {'OK' if not problems else f'{len(problems)} problem(s)'} "
          f"({len(m.shards)} shards, {m.num_samples} samples)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
