"""Every entry point answers a user's mistake with one line and exit status 2, no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # runs the entry scripts as processes: what is tested is their exit
REPO = Path(__file__).resolve().parents[1]


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
            [
                "train/train.py",
                "--config",
                "configs/train/beta_tiny.yaml",
                "device=cpu",
                "output={tmp}/run",
                "data.manifests=[/nonexistent]",
            ],
            "error: /nonexistent: no dataset.json",
        ),
        (
            ["-m", "pipeline", "export", "/nonexistent", "{tmp}/export"],
            "error: /nonexistent: neither a run folder",
        ),
    ],
)
def test_user_error_is_one_line_and_exit_2(tmp_path, command, message):
    (tmp_path / "records.jsonl").write_text("")
    args = [arg.format(tmp=tmp_path) for arg in command]
    result = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(message.format(tmp=tmp_path)), result.stderr[
        -500:
    ]
