"""Every command the README and docs/ show parses against the code as it is now.

Commands in documentation rot silently: a key renamed, a preset moved, a flag dropped. This
reads each bash block and checks each command the way its program would read it: preset and
key=value overrides through the typed configs (so every key must exist and validate), CLI
flags through the real argument parser, scripts and make targets by existence. A command of a
kind not known here fails the test, so a new doc command gets checked too. Running them at
tiny scale is the other tests' job (the README's CPU ``sbatch`` line and its ``ray job submit``
line run as written in test_slurm.py and test_ray_job_submit.py); docs/reproduce.md names which
test runs which command.
"""

import os
import re
import shlex
import subprocess
import sys

import pytest
from helpers import REPO, doc_commands

from pipeline.__main__ import build_parser, eval_config
from pipeline.config import config_from_command_line, load_config
from pipeline.prep.config import PrepConfig
from pipeline.training.config import TrainConfig

PLACEHOLDER = "[key=value ...]"  # "and any other overrides", in usage lines


def check(words: list[str]) -> None:
    env = {}
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value prefixes
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    program, args = words[0], words[1:]
    if program == "sudo":
        return check(args)
    if program == "make":
        targets = re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M)
        assert set(args) <= set(targets), f"make targets {args} not in {targets}"
    elif program == "export":
        assert all(re.fullmatch(r"[A-Z_]+=\S+", a) for a in args)
    elif program == "ray":
        assert args[:2] == ["job", "submit"] and "--" in args, "only 'ray job submit ... -- CMD' is known"
        check(args[args.index("--") + 1 :])
    elif program == "python" and args[0] == "data_prep/build_shards.py":
        config_from_command_line(PrepConfig, "", args[1:])
    elif program == "python" and args[:2] == ["-m", "pipeline"]:
        parsed = build_parser().parse_args(args[2:])
        if parsed.command == "eval":
            eval_config(parsed)
    elif program == "python" and args[:2] == ["-m", "open_clip_train.main"]:
        from open_clip_train.params import parse_args

        assert env.get("PYTHONPATH") in (REPO / "scripts/install.sh").read_text(), "its webdataset 0.2"
        parse_args(args[2:])
    elif program == "python" and args[:2] == ["-m", "clip_benchmark.cli"]:
        assert env.get("PYTHONPATH") in (REPO / "scripts/install.sh").read_text(), "its own folder"
        run = subprocess.run(  # its parser reads sys.argv: ["-c", *args]
            [sys.executable, "-c", "from clip_benchmark.cli import get_parser_args as p; p()", *args[2:]],
            env={**os.environ, "PYTHONPATH": str(REPO / env["PYTHONPATH"])},
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stderr[-2000:]
    elif program == "sbatch":
        script = next(a for a in args if a.endswith(".sh"))
        overrides = args[args.index(script) + 1 :]
        if "--gpus-per-node=0" in args:  # the scripts' #SBATCH headers size a GPU job: 4 nodes, 8 CPUs a task
            sized = {a.split("=")[0] for a in args[: args.index(script)]}
            assert {"--nodes", "--cpus-per-task"} <= sized, "a CPU line must set --nodes and --cpus-per-task"
        default = re.search(r"\$\{CONFIG:-([^}]+)\}", (REPO / script).read_text()).group(1)
        load_config(TrainConfig, REPO / env.get("CONFIG", default), overrides)
    elif program == "python" and args[0] == "scripts/paper_tables.py":
        sys.path.insert(0, str(REPO / "scripts"))
        from paper_tables import build_parser as paper_tables_parser

        paper_tables_parser().parse_intermixed_args(args[1:])
    elif program.startswith(("slurm/", "scripts/")):
        assert (REPO / program).is_file(), f"{program}: no such script"
    elif program == "bash" and args[0].startswith("benchmarks/"):
        script = REPO / args[0]
        known = script.read_text() + (
            script.with_suffix(".py").read_text() if script.with_suffix(".py").exists() else ""
        )
        flags = [a.split("=")[0] for a in args[1:] if a.startswith("--")]
        assert all(f'"{flag}"' in known for flag in flags), f"{args[0]}: a flag of {flags} is unknown to it"
    else:
        raise AssertionError(f"a documented command of an unchecked kind: {' '.join(words)}")


@pytest.mark.parametrize("doc, command", doc_commands(), ids=lambda v: v[:60])
def test_documented_command_parses(doc, command):
    check(shlex.split(command.replace(PLACEHOLDER, "")))


def test_the_guide_is_read():
    guide = [command for doc, command in doc_commands() if doc == "reproduce.md"]
    assert any("build_shards.py" in c for c in guide) and any("sbatch" in c for c in guide)
    assert any("pipeline eval" in c for c in guide)
