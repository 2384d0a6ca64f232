"""Stragglers (pipeline/prep/pool.py): a shard whose worker answers its heartbeat but makes no
progress. The fault is real and outside the library: the input is on S3 behind a proxy on
127.0.0.1 that accepts the request for one image and never answers it. A copy of the shard
starts on another worker once it passes its deadline; the first copy to finish wins, and the
dataset is the undisturbed one. A shard every copy of which stalls is given up with the usual
one line, and a resume finishes the dataset."""

import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import REPO, prep_dataset, relay, s3_server

from pipeline.synthetic import SyntheticConfig, write_corpus

pytestmark = pytest.mark.integration
ARGS = ("samples_per_shard=8", "existing_output=resume", "ray.workers=2", "ray.shard_deadline_floor_s=8")
STALLED = 45  # the record whose image read stalls: in shard 5


class StallingProxy(http.server.ThreadingHTTPServer):
    """Forwards every request to S3, except GETs of ``key``: the first ``stalls`` of them are
    accepted and never answered (until the proxy closes)."""

    daemon_threads = True

    def __init__(self, upstream: str, key: str, stalls: int):
        self.upstream, self.key, self.stalls = int(upstream.rsplit(":", 1)[1]), key, stalls  # moto's port
        self.stalled = 0
        self.closing = threading.Event()
        super().__init__(("127.0.0.1", 0), _Forward)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Forward(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _forward(self) -> None:
        proxy: StallingProxy = self.server
        if self.command == "GET" and self.path.split("?")[0].endswith(proxy.key):
            if proxy.stalled < proxy.stalls:
                proxy.stalled += 1
                proxy.closing.wait()
                return
        relay(self, proxy.upstream, self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


@pytest.fixture(scope="module")
def s3_corpus(tmp_path_factory):
    """160 generated records on S3 (moto on 127.0.0.1): 20 shards of 8."""
    corpus = tmp_path_factory.mktemp("stragglers")
    write_corpus(str(corpus), SyntheticConfig(num_records=160, num_broken=0, seed=5))
    with s3_server("127.0.0.1") as server:
        server.upload(corpus, "corpus")
        yield server, corpus


def prep(server, out: Path, endpoint: str) -> subprocess.CompletedProcess:
    """The prep job as a user runs it, reading S3 through ``endpoint``."""
    command = [
        *(sys.executable, "data_prep/build_shards.py", "--config", "configs/prep/default.yaml"),
        *(f"input.index={server.url}/corpus/records.jsonl", f"output={out}", *ARGS),
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({**server.env, "AWS_ENDPOINT_URL": endpoint})
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def reference(s3_corpus, tmp_path_factory) -> dict:
    server, _ = s3_corpus
    out = tmp_path_factory.mktemp("reference") / "ds"
    done = prep(server, out, server.env["AWS_ENDPOINT_URL"])
    assert done.returncode == 0, done.stderr[-3000:]
    return prep_dataset(out)


def stalled_key(corpus: Path) -> str:
    rows = [json.loads(line) for line in (corpus / "records.jsonl").read_text().splitlines()]
    return f"corpus/{rows[STALLED]['image']}"


@pytest.mark.parametrize("stalls", [1, 100])
def test_a_stalled_shard_is_copied_elsewhere(s3_corpus, reference, tmp_path, stalls):
    """One stall: the copy wins, the dataset is the undisturbed one. Stalls without end: every
    copy passes its deadline, the shard is given up in one line, and a resume finishes it."""
    server, corpus = s3_corpus
    proxy = StallingProxy(server.env["AWS_ENDPOINT_URL"], stalled_key(corpus), stalls)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    out = tmp_path / "ds"
    try:
        job = prep(server, out, proxy.url)
    finally:
        proxy.closing.set()
        proxy.shutdown()
    copied = "shard 5 has run" in job.stderr and "a copy starts on another worker" in job.stderr
    assert copied, job.stderr[-3000:]
    if stalls == 1:
        assert job.returncode == 0, job.stderr[-3000:]
    else:
        assert job.returncode == 3, job.stderr[-3000:]
        last = job.stderr.strip().splitlines()[-1]
        assert re.fullmatch(
            r"incomplete: 19 of 20 shards complete \(could not write shard 5\); "
            r"rerun with existing_output=resume to finish",
            last,
        ), last
        resumed = prep(server, out, server.env["AWS_ENDPOINT_URL"])
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert prep_dataset(out) == reference
