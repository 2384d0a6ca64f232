"""The README's cluster path: a real Ray head on 127.0.0.1 and `ray job submit` of the entry script."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import open_clip
import pytest
import webdataset as wds
from ray_jobs import BIN, submit
from torchvision import transforms

from pipeline.models import TINY_MODEL
from pipeline.synthetic import SyntheticConfig, write_corpus
from pipeline.training.data import DataConfig, build_loader

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    # Token auth, as Ray enables it by default: the head and the client share one token.
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    env.pop("RAY_ADDRESS", None)
    port, dashboard, agent = _free_port(), _free_port(), _free_port()
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
        for _ in range(120):  # until the head's dashboard (the job API) answers
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:  # it answers, if only to refuse
                break
            except OSError:
                assert head.poll() is None, "ray start --head exited"
                time.sleep(1)
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_builds_a_verified_dataset(ray_head, tmp_path):
    address, env = ray_head
    write_corpus(str(tmp_path / "corpus"), SyntheticConfig(num_records=40, num_broken=4))
    out = tmp_path / "shards"
    job = submit(
        address,
        env,
        "data_prep/build_shards.py",
        "--config",
        "configs/prep/default.yaml",
        f"input.index={tmp_path}/corpus/records.jsonl",
        f"output={out}",
        "samples_per_shard=16",
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "records   44 in" in job.stdout  # the manifest summary the entry prints

    verify = subprocess.run(
        [sys.executable, "-m", "pipeline", "manifest", "verify", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    manifest = json.loads((out / "dataset.json").read_text())
    urls = [str(out / s["name"]) for s in manifest["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(samples) == manifest["totals"]["written"] > 30
    assert all(s["jpg"].size == (s["json"]["width"], s["json"]["height"]) for s in samples)


def test_ray_job_submit_s3_to_s3(s3, ray_head, tmp_path):
    """The same entry, records and images in S3, shards and manifest to S3 (the job's processes
    get the AWS variables from the head's environment), then read back by the training loader."""
    address, env = ray_head
    write_corpus(str(tmp_path / "corpus"), SyntheticConfig(num_records=24, num_broken=4))
    s3.upload(tmp_path / "corpus", "submit-corpus")
    out = f"s3://{s3.bucket}/submitted"
    job = submit(
        address,
        env,
        "data_prep/build_shards.py",
        "--config",
        "configs/prep/default.yaml",
        f"input.index=s3://{s3.bucket}/submit-corpus/records.jsonl",
        f"output={out}",
        "samples_per_shard=8",
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]

    verify = subprocess.run(
        [sys.executable, "-m", "pipeline", "manifest", "verify", out],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert verify.returncode == 0 and "verify: OK" in verify.stdout, verify.stdout + verify.stderr
    loader = build_loader(
        DataConfig(manifests=(out,), batch_size=4, workers=0),
        image_size=64,
        tokenizer=open_clip.get_tokenizer(TINY_MODEL),
        transform=transforms.ToTensor(),
    )
    batch = next(iter(loader))
    assert batch.images.shape == (4, 3, 64, 64) and loader.num_samples > 20
