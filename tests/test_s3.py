"""Data prep from S3 to S3, and the training loader reading it back, against a real S3 server
on loopback (moto_server)."""

import gzip
import itertools
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import open_clip
import pytest
import ray
from helpers import relay
from torchvision import transforms

from pipeline import storage
from pipeline.__main__ import main
from pipeline.config import load_config
from pipeline.models import TINY_MODEL
from pipeline.prep.config import PrepConfig
from pipeline.prep.index import count_index_rows, read_index
from pipeline.prep.job import run
from pipeline.shards import check
from pipeline.synthetic import BROKEN_KINDS, SyntheticConfig, write_corpus
from pipeline.training.config import DataConfig
from pipeline.training.data import build_loader

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


class FlakyProxy(ThreadingHTTPServer):
    """An HTTP proxy in front of the S3 server that answers every ``every``-th request with a 503
    SlowDown, the way a busy S3 does: transient errors the clients must retry."""

    def __init__(self, target_port: int, every: int):
        self.target_port, self.every, self.requests, self.failed = target_port, every, 0, 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _forward(self) -> None:
        server: FlakyProxy = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with server.lock:
            server.requests += 1
            fail = server.requests % server.every == 0
            server.failed += fail
        if fail:
            payload = (
                b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            )
            self.send_response(503)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        relay(self, server.target_port, body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

    def log_message(self, *args) -> None:
        pass


def test_prep_reads_and_writes_s3(s3, tmp_path, capsys):
    summary = write_corpus(
        str(tmp_path / "corpus"), SyntheticConfig(num_records=40, num_broken=len(BROKEN_KINDS))
    )
    s3.upload(tmp_path / "corpus", "corpus")
    out = f"s3://{s3.bucket}/datasets/demo"
    cfg = load_config(
        PrepConfig,
        REPO / "configs/prep/default.yaml",
        [f"input.index=s3://{s3.bucket}/corpus/records.jsonl", f"output={out}", "samples_per_shard=16"],
    )
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
    assert sorted(names) == sorted(
        [s.name for s in manifest.shards]
        + ["dataset.json", "shards.parquet", "dropped.parquet", "sizes.json"]
    )
    assert check.verify(manifest) == [] and check.validate(manifest) == []

    assert main(["manifest", "verify", out]) == 0 and "verify: OK" in capsys.readouterr().out
    assert "testing" not in storage.read_bytes(f"{out}/dataset.json").decode()  # no credentials in manifests

    # the training loader streams the shards from S3, in its worker processes too
    loader = build_loader(
        DataConfig(manifests=(out,), batch_size=8, workers=2, num_regions=4),
        tokenizer=open_clip.get_tokenizer(TINY_MODEL),
        image_size=64,
        transform=transforms.ToTensor(),
    )
    batches = list(itertools.islice(iter(loader), loader.batches_per_epoch))
    assert len(batches) == loader.batches_per_epoch == manifest.num_samples // 8 > 0
    assert all(b.images.shape == (8, 3, 64, 64) and b.token_mask[:, 0].all() for b in batches)
    assert not loader.skipped


def test_a_gzipped_index_on_s3_reads_as_the_plain_one(s3, tmp_path):
    """img2dataset's and HF's ``records.jsonl.gz``, streamed from S3 as it downloads: the same
    records, drops and row count as the plain file beside it."""
    write_corpus(str(tmp_path / "corpus"), SyntheticConfig(num_records=30, num_broken=len(BROKEN_KINDS)))
    plain = (tmp_path / "corpus/records.jsonl").read_bytes()
    (tmp_path / "corpus/records.jsonl.gz").write_bytes(gzip.compress(plain))
    s3.upload(tmp_path / "corpus", "zipped")
    urls = [f"s3://{s3.bucket}/zipped/records.jsonl{suffix}" for suffix in ("", ".gz")]
    streams = [list(map(repr, read_index(url, 10_000))) for url in urls]  # repr: NaN boxes are equal
    assert streams[0] == streams[1] and len(streams[0]) == count_index_rows(urls[1]) > 30


def test_missing_s3_index_fails_before_any_work(s3):
    cfg = load_config(
        PrepConfig,
        REPO / "configs/prep/default.yaml",
        [f"input.index=s3://{s3.bucket}/nowhere/records.jsonl", f"output=s3://{s3.bucket}/x"],
    )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(cfg)
    assert storage.list_names(f"s3://{s3.bucket}/x") == []


def test_transient_s3_errors_are_retried_and_change_nothing(s3, tmp_path):
    """Every 4th request fails with 503; the dataset comes out byte-identical to a clean run."""
    write_corpus(str(tmp_path / "corpus"), SyntheticConfig(num_records=24, num_broken=4, seed=3))
    s3.upload(tmp_path / "corpus", "flaky-corpus")
    proxy = FlakyProxy(int(s3.env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]), every=4)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()

    def prep(out: str, endpoint: str):
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        storage._client.cache_clear()
        cfg = load_config(
            PrepConfig,
            REPO / "configs/prep/default.yaml",
            [
                f"input.index=s3://{s3.bucket}/flaky-corpus/records.jsonl",
                f"output={out}",
                "samples_per_shard=8",
            ],
        )
        ray.init(num_cpus=2, include_dashboard=False)  # workers see this endpoint
        try:
            return run(cfg)
        finally:
            ray.shutdown()
            os.environ["AWS_ENDPOINT_URL"] = s3.env["AWS_ENDPOINT_URL"]
            storage._client.cache_clear()

    try:
        clean = prep(f"s3://{s3.bucket}/clean", s3.env["AWS_ENDPOINT_URL"])
        flaky = prep(f"s3://{s3.bucket}/flaky", f"http://127.0.0.1:{proxy.server_port}")
    finally:
        proxy.shutdown()
    assert proxy.failed >= 5  # the faults really happened
    assert [(s.name, s.sha256) for s in flaky.shards] == [(s.name, s.sha256) for s in clean.shards]
    assert flaky.data["totals"] == clean.data["totals"] and check.verify(flaky) == []
