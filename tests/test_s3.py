"""Data prep from S3 to S3, and the training loader reading it back, against a real S3 server
on loopback (moto_server)."""

import itertools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import open_clip
import pytest
import ray
from torchvision import transforms

from pipeline.config import load_config
from pipeline.models import TINY_MODEL
from pipeline.prep import PrepConfig, run
from pipeline.shards import check, storage
from pipeline.synthetic import BROKEN_KINDS, SyntheticConfig, write_corpus
from pipeline.training.data import DataConfig, build_loader

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
BUCKET = "fgclip-test"


@pytest.fixture(scope="module")
def s3_env():
    """A moto_server on 127.0.0.1 and the standard AWS variables pointing at it (dummy keys)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([Path(sys.executable).parent / "moto_server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    storage._client.cache_clear()
    try:
        for _ in range(100):
            try:
                boto3.client("s3").create_bucket(Bucket=BUCKET)
                break
            except Exception:
                time.sleep(0.1)
        yield env
    finally:
        server.terminate()
        server.wait()
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        storage._client.cache_clear()


def _upload(folder: Path, prefix: str) -> None:
    client = boto3.client("s3")
    for path in folder.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")


def test_prep_reads_and_writes_s3(s3_env, tmp_path):
    summary = write_corpus(str(tmp_path / "corpus"), SyntheticConfig(num_records=40, num_broken=len(BROKEN_KINDS)))
    _upload(tmp_path / "corpus", "corpus")
    out = f"s3://{BUCKET}/datasets/demo"
    cfg = load_config(PrepConfig, REPO / "configs/prep/default.yaml",
                      [f"input.index=s3://{BUCKET}/corpus/records.jsonl", f"output={out}",
                       "samples_per_shard=16", "ray.text_batch_size=32"])
    ray.init(num_cpus=2, include_dashboard=False)  # workers inherit the AWS variables
    try:
        manifest = run(cfg)
        with pytest.raises(FileExistsError):
            run(cfg)
    finally:
        ray.shutdown()

    totals = manifest.data["totals"]
    assert totals["inputs"] == summary.records == totals["written"] + totals["dropped"]
    assert totals["dropped_by_reason"]["image_missing"] == summary.broken["missing_image"]
    assert manifest.data["input"]["source"] == "corpus"
    names = storage.list_names(out)
    assert sorted(names) == sorted([s.name for s in manifest.shards] +
                                   ["dataset.json", "shards.parquet", "dropped.parquet"])
    assert check.verify(manifest) == [] and check.validate(manifest) == []

    verify = subprocess.run([sys.executable, "-m", "pipeline", "manifest", "verify", out], cwd=REPO,
                            env={**os.environ, **s3_env}, capture_output=True, text=True)
    assert verify.returncode == 0 and "verify: OK" in verify.stdout, verify.stdout + verify.stderr
    assert "testing" not in storage.read_bytes(f"{out}/dataset.json").decode()  # no credentials in manifests

    # the training loader streams the shards from S3, in its worker processes too
    loader = build_loader(DataConfig(manifests=(out,), batch_size=8, workers=2, num_regions=4),
                          tokenizer=open_clip.get_tokenizer(TINY_MODEL), image_size=64,
                          transform=transforms.ToTensor())
    batches = list(itertools.islice(iter(loader), loader.batches_per_epoch))
    assert len(batches) == loader.batches_per_epoch == manifest.num_samples // 8 > 0
    assert all(b.images.shape == (8, 3, 64, 64) and b.token_mask[:, 0].all() for b in batches)
    assert not loader.skipped


def test_missing_s3_index_fails_before_any_work(s3_env):
    cfg = load_config(PrepConfig, REPO / "configs/prep/default.yaml",
                      [f"input.index=s3://{BUCKET}/nowhere/records.jsonl", f"output=s3://{BUCKET}/x"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(cfg)
    assert storage.list_names(f"s3://{BUCKET}/x") == []
