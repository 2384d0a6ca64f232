"""Shard write throughput: a local S3 endpoint (moto_server on 127.0.0.1) vs local disk, one run.

    python benchmarks/bench_storage.py [--shards 8] [--samples 500]

Each shard is written with ``pipeline.shards.writer.write_shard`` (tar, hashing, atomic publish:
rename on disk, one upload on S3) from the same in-memory samples (~30 kB JPEG-sized payloads).
moto keeps objects in memory and runs on the same cores, so this measures our write path and
the HTTP round trips, not a real S3's bandwidth.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from botocore.exceptions import EndpointConnectionError

from pipeline import storage
from pipeline.shards.writer import shard_name, write_shard


def samples(n: int) -> list[tuple[str, bytes, dict]]:
    return [
        (f"{i:020d}", os.urandom(30_000), {"id": str(i), "caption": "a red circle " * 20}) for i in range(n)
    ]


def write_rate(root: str, shards: int, batch: list) -> float:
    """MB/s of shard bytes written, published and visible."""
    start = time.perf_counter()
    written = sum(write_shard(f"{root}/{shard_name(i)}", batch).bytes for i in range(shards))
    return written / 1e6 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--samples", type=int, default=500)
    args = parser.parse_args()
    batch = samples(args.samples)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [Path(sys.executable).parent / "moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        for _ in range(100):
            try:
                storage._s3().create_bucket(Bucket="bench")
                break
            except EndpointConnectionError:  # not listening yet
                time.sleep(0.1)
        with tempfile.TemporaryDirectory() as tmp:
            disk = write_rate(tmp, args.shards, batch)
        s3 = write_rate("s3://bench/shards", args.shards, batch)
    finally:
        server.terminate()
    print(f"{args.shards} shards x {args.samples} samples (~{args.samples * 30 / 1000:.0f} MB each)")
    print(f"local disk  {disk:8.1f} MB/s")
    print(f"S3 (moto)   {s3:8.1f} MB/s")
    print(f"ratio       {s3 / disk:8.2f}x  (S3 / disk)")


if __name__ == "__main__":
    main()
