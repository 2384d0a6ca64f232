"""Multi-node rehearsal: slurm/train_beta.sh, unchanged, on a two-node Slurm on this machine.

slurm/local/two-node-cluster.sh makes each node a network namespace with its own address and
hostname, so the ranks rendezvous and all-reduce over a network interface, as on a cluster
(two processes on one loopback would not prove that). Needs root: namespaces, and the fixture
installs and starts slurm-wlm + munge.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest
from helpers import REPO, job_log, logged_steps, sbatch

pytestmark = pytest.mark.integration
DIGEST = re.compile(r"step (\d+): parameters sha256 (\w+) on all (\d+) rank\(s\) \(hosts ([\w,.-]+)\)")


@pytest.fixture(scope="module")
def two_nodes():
    """The environment that points Slurm's commands at the two-node cluster."""
    if os.geteuid() != 0:
        pytest.skip("the two-node cluster needs root (network namespaces; slurm/local/two-node-cluster.sh)")
    cluster = REPO / "slurm/local/two-node-cluster.sh"
    subprocess.run(["bash", cluster, "start"], check=True, capture_output=True, timeout=600)
    yield {**os.environ, "SLURM_CONF": "/etc/slurm-twonode/slurm.conf"}
    subprocess.run(["bash", cluster, "stop"], check=True, capture_output=True, timeout=120)


def train(env: dict[str, str], out: Path, shards: Path, nodes: int, *overrides: str) -> str:
    """One rank per node, as a cluster job with one GPU per node would run; returns its log."""
    sbatch(
        "slurm/train_beta.sh",
        out,
        f"data.manifests=[{shards}]",
        "data.batch_size=8",
        "data.workers=1",
        "log_every=1",
        "replica_check_every=1",
        *overrides,
        wait=True,
        nodes=nodes,
        tasks_per_node=1,
        env=env,
    )
    return job_log(out)


def digests(log: str) -> dict[int, tuple[str, int, str]]:
    """step → (parameter digest, ranks, hosts), from the replica checks; later jobs win."""
    return {int(step): (digest, int(ranks), hosts) for step, digest, ranks, hosts in DIGEST.findall(log)}


def test_two_nodes_average_gradients_into_identical_replicas(two_nodes, tmp_path, generated_shards):
    """ZeRO-0: each node applies the whole update itself, so its replica matches the other's only
    if the gradients were averaged across nodes (each node saw different samples)."""
    out = tmp_path / "zero0"
    log = train(two_nodes, out, generated_shards, 2, "zero_stage=0", "steps=3")
    assert "2 tasks on node[1-2]" in log and "rendezvous node1:" in log, log[-4000:]
    assert "finished at step 3" in log, log[-4000:]
    checks = digests(log)
    assert sorted(checks) == [0, 1, 2, 3]
    assert all(ranks == 2 and hosts == "node1,node2" for _, ranks, hosts in checks.values()), checks
    assert len({digest for digest, _, _ in checks.values()}) == 4  # every step moved the weights
    assert logged_steps(out) == [1, 2, 3]


def test_zero2_checkpoint_from_two_nodes_resumes_on_one_and_back(two_nodes, tmp_path, generated_shards):
    """2 nodes → 1 node → 2 nodes: ZeRO's partitions are re-cut each time, and the weights each
    job starts from are bit for bit the ones the previous job saved."""
    out = tmp_path / "resized"
    common = ("zero_stage=2", "steps=6", "checkpoint.every=2")
    first = digests(train(two_nodes, out, generated_shards, 2, *common, "stop_after=2"))
    log = train(two_nodes, out, generated_shards, 1, *common, "stop_after=4", "grad_accum=2")
    assert "re-partitioned from 2 to 1 ranks" in log, log[-4000:]
    second = digests(log)
    log = train(two_nodes, out, generated_shards, 2, *common)
    assert "re-partitioned from 1 to 2 ranks" in log and "finished at step 6" in log, log[-4000:]
    third = digests(log)

    assert first[2][0] == second[2][0] and second[2][1] == 1  # resumed on one node from two
    assert second[4][0] == third[4][0] and third[4][1:] == (2, "node1,node2")  # and back on two
    assert logged_steps(out) == [1, 2, 3, 4, 5, 6]
    assert not (out / "checkpoints/universal").exists()  # the converted copy is removed once loaded
    assert (out / "export/open_clip_model.safetensors").exists()
