"""Data prep across two Ray nodes: scripts/two-node-ray.sh makes each node a network namespace
with its own address and hostname, input and output are on S3 (moto on the bridge address),
and the job is submitted to the head with ``ray job submit``, as on a cluster. Needs root
(network namespaces)."""

import json
import os
import secrets
import subprocess

import boto3
import pyarrow.parquet as pq
import pytest
import ray
from helpers import BIN, REPO, ray_job_submit, s3_server

from pipeline import storage
from pipeline.config import load_config
from pipeline.prep import PrepConfig, run
from pipeline.synthetic import SyntheticConfig, write_corpus

pytestmark = pytest.mark.integration
HOST = "10.78.0.1"  # the host's address on the nodes' bridge
HEAD = "http://10.78.0.11:8265"


@pytest.fixture(scope="module")
def two_nodes():
    """The environment ``ray job submit`` needs to reach the two-node cluster (its token)."""
    if os.geteuid() != 0:
        pytest.skip("the two-node Ray cluster needs root (network namespaces; scripts/two-node-ray.sh)")
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    script = REPO / "scripts/two-node-ray.sh"
    started = subprocess.run(
        ["bash", script, "start"], check=False, env=env, capture_output=True, text=True, timeout=300
    )
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield env
    finally:
        subprocess.run(["bash", script, "stop"], env=env, check=True, capture_output=True, timeout=120)


def dataset(root: str) -> dict:
    """What must not depend on where the job ran: shards (names, bytes, sha256), totals, drops."""
    manifest = json.loads(storage.read_bytes(f"{root}/dataset.json"))
    dropped = pq.read_table(storage.open_read(f"{root}/dropped.parquet")).to_pylist()
    return {
        "shards": manifest["shards"],
        "totals": manifest["totals"],
        "dropped": dropped,
        "run_id": manifest["run_id"],
    }


def test_two_nodes_share_the_work_and_write_the_one_node_dataset(two_nodes, tmp_path):
    write_corpus(str(tmp_path / "corpus"), SyntheticConfig(num_records=120, num_broken=10, seed=11))
    with s3_server(HOST) as s3:
        s3.upload(tmp_path / "corpus", "corpus")
        args = [
            "--config",
            "configs/prep/default.yaml",
            f"input.index=s3://{s3.bucket}/corpus/records.jsonl",
            "samples_per_shard=10",
        ]
        submit = ["ray", "job", "submit", "--address", HEAD, "--working-dir", "."]
        runtime_env = ["--runtime-env-json", json.dumps({"env_vars": s3.env})]
        entry = ["python", "data_prep/build_shards.py", *args, f"output=s3://{s3.bucket}/two-node"]
        job = ray_job_submit([*submit, *runtime_env, "--", *entry], two_nodes)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        manifest = json.loads(
            boto3.client("s3").get_object(Bucket=s3.bucket, Key="two-node/dataset.json")["Body"].read()
        )
        assert {s["node"] for s in manifest["shard_stats"]} == {"node1", "node2"}, manifest["shard_stats"]

        cfg = load_config(
            PrepConfig, REPO / "configs/prep/default.yaml", [*args[2:], f"output=s3://{s3.bucket}/one-node"]
        )
        ray.init(num_cpus=1, include_dashboard=False)  # one node, one worker
        try:
            run(cfg)
        finally:
            ray.shutdown()
        assert dataset(f"s3://{s3.bucket}/two-node") == dataset(f"s3://{s3.bucket}/one-node")
