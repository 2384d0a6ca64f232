"""The README's cluster path: a real Ray head on 127.0.0.1 and its `ray job submit` line, run as
written with the head's address and the test's paths in place of the placeholders."""

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import open_clip
import pytest
import webdataset as wds
from helpers import BIN, documented, free_port, ray_job_submit
from torchvision import transforms

from pipeline.__main__ import main
from pipeline.models import TINY_MODEL
from pipeline.synthetic import SyntheticConfig, write_corpus
from pipeline.training.config import DataConfig
from pipeline.training.data import build_loader

pytestmark = pytest.mark.integration


def submit_readme_line(address: str, env: dict[str, str], index: str, output: str):
    line = documented(
        "README.md",
        "ray job submit",
        replace={
            "http://HEAD:8265": address,
            "/data/mycorpus/records.jsonl": index,
            "/data/shards/mycorpus": output,
        },
    )
    return ray_job_submit(["bash", "-c", line], env)


def _wait_for_answer(url: str, head: subprocess.Popen) -> None:
    """Until the head's dashboard (the job API) answers, for two minutes at most."""
    for _ in range(120):
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:  # it answers, if only to refuse
            return
        except OSError:
            assert head.poll() is None, "ray start --head exited"
            time.sleep(1)


@pytest.fixture(scope="module")
def ray_head(s3):
    """One head for the module (a head takes half a minute to stop), started after the S3 server
    so that the jobs' processes get its AWS variables from the head's environment."""
    # Token auth, as Ray enables it by default: the head and the client share one token.
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    env.pop("RAY_ADDRESS", None)
    port, dashboard, agent = free_port(), free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    # --block, in a session of its own: teardown stops this head and its processes, and no other Ray
    # on the machine (``ray stop`` would stop every one, a user's demo included).
    head = subprocess.Popen(
        [
            BIN / "ray",
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dashboard),
            "--dashboard-agent-listen-port",
            str(agent),  # not the default 52365 another Ray may hold
            "--disable-usage-stats",
            "--temp-dir",
            temp_dir,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for_answer(f"http://127.0.0.1:{dashboard}/api/version", head)
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_builds_a_verified_dataset(ray_head, tmp_path, capsys):
    address, env = ray_head
    write_corpus(str(tmp_path / "corpus"), SyntheticConfig(num_records=40, num_broken=4))
    out = tmp_path / "shards"
    job = submit_readme_line(address, env, f"{tmp_path}/corpus/records.jsonl", str(out))
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "records   44 in" in job.stdout  # the manifest summary the entry prints

    assert main(["manifest", "verify", str(out)]) == 0, capsys.readouterr().out
    manifest = json.loads((out / "dataset.json").read_text())
    urls = [str(out / s["name"]) for s in manifest["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(samples) == manifest["totals"]["written"] > 30
    assert all(s["jpg"].size == (s["json"]["width"], s["json"]["height"]) for s in samples)


def test_ray_job_submit_s3_to_s3(s3, ray_head, tmp_path, capsys):
    """The same line, records and images in S3, shards and manifest to S3, then read back by the
    training loader."""
    address, env = ray_head
    write_corpus(str(tmp_path / "corpus"), SyntheticConfig(num_records=24, num_broken=4))
    s3.upload(tmp_path / "corpus", "submit-corpus")
    out = f"s3://{s3.bucket}/submitted"
    job = submit_readme_line(address, env, f"s3://{s3.bucket}/submit-corpus/records.jsonl", out)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]

    assert main(["manifest", "verify", out]) == 0
    assert "verify: OK" in capsys.readouterr().out
    loader = build_loader(
        DataConfig(manifests=(out,), batch_size=4, workers=0),
        image_size=64,
        tokenizer=open_clip.get_tokenizer(TINY_MODEL),
        transform=transforms.ToTensor(),
    )
    batch = next(iter(loader))
    assert batch.images.shape == (4, 3, 64, 64) and loader.num_samples > 20
