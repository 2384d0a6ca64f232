"""Data prep across two Ray nodes: scripts/two-node-ray.sh makes each node a network namespace
with its own address and hostname, input and output are on S3 (moto on the bridge address),
and the job is submitted to the head with ``ray job submit``, as on a cluster. Needs root
(network namespaces)."""

import json
import os
import re
import secrets
import subprocess
import time

import boto3
import pyarrow.parquet as pq
import pytest
import ray
from helpers import BIN, REPO, ray_job_submit, s3_server

from pipeline import storage
from pipeline.config import load_config
from pipeline.prep.config import PrepConfig
from pipeline.prep.job import run
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


@pytest.fixture(scope="module")
def s3(two_nodes, tmp_path_factory):
    """S3 on the bridge, holding the corpus (360 records, 10 broken: 36 shards of 10). Its index
    rows carry a field prep does not read, so the index is over one block and the driver parses
    it in reader processes (``prep/index._in_order``), as it does a user's large index."""
    corpus = tmp_path_factory.mktemp("corpus")
    write_corpus(str(corpus), SyntheticConfig(num_records=360, num_broken=10, seed=11))
    index = corpus / "records.jsonl"
    rows = [json.loads(line) for line in index.read_text().splitlines()]
    index.write_text("".join(json.dumps({**row, "notes": "n" * 3000}) + "\n" for row in rows))
    with s3_server(HOST) as server:
        server.upload(corpus, "corpus")
        yield server


@pytest.fixture(scope="module")
def one_node(s3) -> dict:
    """The dataset a one-node run writes (one worker, in this process)."""
    cfg = load_config(
        PrepConfig, REPO / "configs/prep/default.yaml", [*args(s3)[2:], f"output={s3.url}/one-node"]
    )
    ray.init(num_cpus=1, include_dashboard=False)
    try:
        run(cfg)
    finally:
        ray.shutdown()
    return dataset(f"{s3.url}/one-node")


def args(s3) -> list[str]:
    index = f"input.index={s3.url}/corpus/records.jsonl"
    return ["--config", "configs/prep/default.yaml", index, "samples_per_shard=10"]


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


def submit(s3, two_nodes, out: str, *overrides: str) -> str:
    """``ray job submit`` of the prep job, as a user runs it, to the two-node cluster; its id."""
    runtime_env = json.dumps({"env_vars": s3.env})
    command = [
        *("ray", "job", "submit", "--no-wait", "--address", HEAD, "--working-dir", "."),
        *("--runtime-env-json", runtime_env, "--", "python", "data_prep/build_shards.py"),
        *(*args(s3), f"output={s3.url}/{out}", *overrides),
    ]
    job = ray_job_submit(command, two_nodes)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    return re.search(r"raysubmit_\w+", job.stdout).group()


def job_cli(two_nodes, command: str, job: str, *options: str) -> str:
    """``ray job COMMAND JOB``'s output."""
    ray_job = ["ray", "job", command, *options, "--address", HEAD, job]
    done = subprocess.run(ray_job, env=two_nodes, capture_output=True, text=True, timeout=600)
    return done.stdout + done.stderr


def finished(two_nodes, job: str) -> str:
    """The job's log, once it has ended; it must have succeeded."""
    logs, status = job_cli(two_nodes, "logs", job, "--follow"), job_cli(two_nodes, "status", job)
    assert f"Job '{job}' succeeded" in status, status + logs[-4000:]
    return logs


def completion_records(s3, out: str) -> list[dict]:
    """The completion records the running job has written so far (their stats). A record listed
    but gone when read is skipped: the job removes them when it ends (``wait_for`` then sees it)."""
    listing = boto3.client("s3").list_objects_v2(Bucket=s3.bucket, Prefix=f"{out}/_progress/")
    records = []
    for item in listing.get("Contents", []):
        try:
            records.append(json.loads(storage.read_bytes(f"{s3.url}/{item['Key']}"))["stats"])
        except FileNotFoundError:
            continue
    return records


def wait_for(condition, what: str, two_nodes=None, job: str | None = None) -> None:
    """Until ``condition()``, for 300 s at most; with ``job``, failing at once if it has ended."""
    deadline, looked = time.monotonic() + 300, time.monotonic()
    while not condition():
        assert time.monotonic() < deadline, f"no {what} in 300 s"
        if job and time.monotonic() - looked > 5:
            looked = time.monotonic()
            status = job_cli(two_nodes, "status", job)
            assert "RUNNING" in status or "PENDING" in status, (
                status + job_cli(two_nodes, "logs", job)[-4000:]
            )
        time.sleep(0.2)


def cluster(two_nodes, *command: str) -> None:
    subprocess.run(
        ["bash", REPO / "scripts/two-node-ray.sh", *command], env=two_nodes, check=True, timeout=120
    )


SHARDS = 37  # 370 input lines, 10 a shard
# When node 2 is killed, from the shards the job has completed (and a function giving its log).
KILL_WHEN = {
    "before_the_first_shard": lambda shards, log: not shards and "text: spaCy model" in log(),
    "mid_job": lambda shards, log: any(s["node"] == "node2" for s in shards),
    "in_the_last_shards": lambda shards, log: len(shards) >= SHARDS - 2,
}


@pytest.mark.parametrize(
    ("moment", "dedup"), [*((moment, "driver") for moment in KILL_WHEN), ("mid_job", "distributed")]
)
def test_a_node_lost_costs_nothing(two_nodes, s3, one_node, moment, dedup):
    """The README's ``ray job submit --working-dir .``; every process of node 2 is killed before
    the first shard lands (its workers started), mid-job (once it has written a shard) or in the
    last shards: the shards it held run on node 1, and the job finishes by itself with the
    one-node dataset. With ``ray.dedup=distributed`` the parts of the id set on node 2 go too:
    the set is rebuilt from a second read of the index (its second block is looked up after
    the kill), and the dataset is the same."""
    out = f"node-lost-{moment}-{dedup}"
    # The last shards of a fast job land within a second: grounding that takes its time (from
    # tests/, grounding as the default does) keeps them open long enough to be killed in.
    slow = ["grounding.name=plugin", "grounding.plugin=tests.fault_grounders:Slow"]
    job = submit(
        s3,
        two_nodes,
        out,
        f"ray.dedup={dedup}",
        "ray.dedup_parts=4",
        *(slow if moment == "in_the_last_shards" else []),
    )
    log = lambda: job_cli(two_nodes, "logs", job)  # noqa: E731
    wait_for(lambda: KILL_WHEN[moment](completion_records(s3, out), log), moment, two_nodes, job)
    cluster(two_nodes, "kill-node", "2")
    try:
        logs = finished(two_nodes, job)
    finally:
        cluster(two_nodes, "join-node", "2")
    assert "Traceback" not in logs, logs[-4000:]
    assert ("reading the input again to rebuild it" in logs) == (dedup == "distributed"), logs[-4000:]
    manifest = json.loads(storage.read_bytes(f"{s3.url}/{out}/dataset.json"))
    if moment == "mid_job":
        assert {s["node"] for s in manifest["shard_stats"]} == {"node1", "node2"}
    got, expected = dataset(f"{s3.url}/{out}"), one_node
    if moment == "in_the_last_shards":  # another grounder's run id; the same shards, totals, drops
        got, expected = {**got, "run_id": None}, {**expected, "run_id": None}
    assert got == expected


def test_a_node_that_joins_mid_job_takes_shards(two_nodes, s3, one_node):
    """The job starts on node 1 alone; node 2 joins once shards land, and writes some of the rest.
    A grounder that takes its time (from tests/, in the job's working dir) makes the job outlast
    the join; it grounds as the default one does."""
    cluster(two_nodes, "kill-node", "2")
    slow = ["grounding.name=plugin", "grounding.plugin=tests.fault_grounders:Slow"]
    job = submit(s3, two_nodes, "node-joins", *slow)
    wait_for(lambda: len(completion_records(s3, "node-joins")) >= 2, "shard")
    cluster(two_nodes, "join-node", "2")
    logs = finished(two_nodes, job)
    manifest = json.loads(storage.read_bytes(f"{s3.url}/node-joins/dataset.json"))
    nodes = [s["node"] for s in manifest["shard_stats"]]
    assert nodes[0] == "node1" and "node2" in nodes, logs
    assert {**dataset(f"{s3.url}/node-joins"), "run_id": None} == {**one_node, "run_id": None}
