"""Every entry point answers a user's mistake with one line and exit status 2, no traceback.

The entries run in this process, the scripts through runpy as ``python SCRIPT`` runs them: what
is tested is what they print and the status they exit with. Except train/train.py, whose run sets
up a process group before it reads the data: that one runs as its own process.
"""

import os
import runpy
import subprocess
import sys

import pytest
from helpers import REPO, free_port, one_rank

from pipeline.__main__ import main


def exit_status(args: list[str], monkeypatch) -> int:
    """``python ARGS...`` in this process: ``-m pipeline ...`` or a script run as ``__main__``."""
    if args[:2] == ["-m", "pipeline"]:
        return main(args[2:])
    monkeypatch.setattr(sys, "argv", args)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts the checkout first
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(REPO / args[0]), run_name="__main__")
    return exited.value.code


@pytest.mark.parametrize(
    "command, message",
    [
        (
            ["data_prep/build_shards.py", "input.index=/nonexistent/records.jsonl", "output={tmp}/out"],
            "error: input.index: /nonexistent/records.jsonl does not exist",
        ),
        (
            ["data_prep/build_shards.py", "input.index={tmp}/records.jsonl", "output={tmp}"],
            "error: output: {tmp} holds the input {tmp}/records.jsonl; write the dataset to another folder",
        ),
        (
            [
                "data_prep/build_shards.py",
                "input.index={tmp}/records.jsonl",
                "output={tmp}/out",
                "name=[unclosed",
            ],
            "config error: name: '[unclosed' is not a YAML value",
        ),
        (
            ["-m", "pipeline", "export", "/nonexistent", "{tmp}/export"],
            "error: /nonexistent: neither a run folder",
        ),
        (  # checked before the demo generates or preps anything
            ["-m", "pipeline", "demo", "--workdir", "{tmp}/demo", "--train", "optim.lrr=1"],
            "config error: optim.lrr",
        ),
    ],
)
def test_user_error_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, command, message):
    (tmp_path / "records.jsonl").write_text("")
    assert exit_status([arg.format(tmp=tmp_path) for arg in command], monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(message.format(tmp=tmp_path)), err[-500:]


@pytest.mark.integration
def test_training_user_error_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "train/train.py",
            "--config",
            "configs/train/beta_tiny.yaml",
            "device=cpu",
            f"output={tmp_path}/run",
            "data.manifests=[/nonexistent]",
        ],
        cwd=REPO,
        env={**os.environ, "MASTER_PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: /nonexistent: no dataset.json"), (
        result.stderr[-500:]
    )


@pytest.mark.parametrize("data", ["empty", "unparsable"])
def test_training_on_data_that_cannot_train_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, data):
    """A dataset without samples, or none of whose samples parse (read in DataLoader workers):
    one line, in this process, whose process group is gone after the run."""
    import torch.distributed as dist
    from test_loader import write_dataset

    samples = [] if data == "empty" else [(f"k{i}", b"jpg", {"caption": "not schema v1"}) for i in range(8)]
    path = write_dataset(tmp_path / data, [samples[:4], samples[4:]])
    command = [
        "train/train.py",
        "--config",
        "configs/train/beta_tiny.yaml",
        "device=cpu",
        "tensorboard=false",
    ]
    command += [f"output={tmp_path}/run", f"data.manifests=[{path}]", "data.batch_size=4", "data.workers=2"]
    one_rank(monkeypatch)
    assert exit_status(command, monkeypatch) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and not dist.is_initialized()
    expected = "has no samples" if data == "empty" else "no usable sample in a batch of 4"
    assert err.strip().splitlines()[-1].startswith("error: data.manifests") and expected in err, err[-2000:]
