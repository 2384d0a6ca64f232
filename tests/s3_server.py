"""A real S3 server (moto_server) for tests: on loopback, or on an address other machines (network
namespaces) reach."""

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.exceptions import EndpointConnectionError

from pipeline import storage


@dataclass(frozen=True)
class S3Server:
    env: dict[str, str]  # the standard AWS variables that point clients at it
    bucket: str

    def upload(self, folder: Path, prefix: str) -> None:
        client = boto3.client("s3")
        for path in folder.rglob("*"):
            if path.is_file():
                client.upload_file(str(path), self.bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


@contextlib.contextmanager
def s3_server(host: str) -> Iterator[S3Server]:
    """moto_server on ``host`` with one bucket; this process's environment points at it (dummy
    keys) while it runs, so Ray workers started meanwhile do too."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [Path(sys.executable).parent / "moto_server", "-H", host, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    storage._client.cache_clear()
    try:
        for _ in range(100):  # until the server answers
            try:
                boto3.client("s3").create_bucket(Bucket="fgclip-test")
                break
            except EndpointConnectionError:  # not listening yet
                time.sleep(0.1)
        yield S3Server(env, "fgclip-test")
    finally:
        server.terminate()
        server.wait()
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        storage._client.cache_clear()
