"""What several test modules share, in one place: torchrun, the tiny model and batch, the command
lines the docs show, a real S3 server, and submitting jobs to Ray and Slurm as a user does.
Fixtures live in conftest.py; test modules import from here, never from each other."""

import contextlib
import http.client
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import boto3
import open_clip
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
from botocore.exceptions import EndpointConnectionError

from pipeline import storage
from pipeline.batch import Batch
from pipeline.models import TINY_MODEL, FineGrainedCLIP, ModelConfig

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_rank(monkeypatch) -> None:
    """This process as the one rank of a run, on a free port: the launcher variables a run sets
    (``init_distributed``) are the test's, undone after it, and no later test's rendezvous
    collides with a port this one held."""
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASTER_PORT", str(free_port()))


def init_gloo(rank: int, world_size: int, port: int) -> None:
    """This process as ``rank`` of a CPU process group on the loopback (an mp.spawn worker)."""
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60),
    )


def torchrun(config: str, *overrides: str, ranks: int = 2, check: bool = True) -> subprocess.CompletedProcess:
    """train/train.py on ``ranks`` CPU ranks (gloo), as ``torchrun`` launches it; with ``check``,
    it must exit 0."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(ranks),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "train/train.py",
        "--config",
        config,
        "device=cpu",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 or not check, result.stdout[-4000:] + result.stderr[-4000:]
    return result


# --- the tiny model and batch ----------------------------------------------------------------------

TOKENIZER = open_clip.get_tokenizer("ViT-B-16")
PHRASES = ["a red ball", "a blue cube", "the small green cone", "a yellow star", "a large purple ring"]


def tiny_batch(num_images: int = 4, seed: int = 0) -> Batch:
    """Random images, 1 caption + 1-2 sentences + 1-3 phrases (shared vocabulary, so identical
    phrases recur across images), most phrases grounded to a random box; K = 6, R = 3."""
    rng = random.Random(seed)
    images = torch.randn(num_images, 3, 128, 128, generator=torch.Generator().manual_seed(seed))
    texts, regions = [], []
    for i in range(num_images):
        sentences = [f"sentence {j} about picture {i} with some objects." for j in range(rng.randint(1, 2))]
        phrases = rng.sample(PHRASES, rng.randint(1, 3))
        texts.append([f"picture {i}: " + " and ".join(phrases)] + sentences + phrases)
        first_phrase = 1 + len(sentences)
        boxes = []
        for slot in range(first_phrase, len(texts[-1])):
            if rng.random() < 0.8:
                x0, y0 = rng.uniform(0, 90), rng.uniform(0, 90)
                boxes.append(((x0, y0, x0 + rng.uniform(8, 38), y0 + rng.uniform(8, 38)), slot))
        regions.append(boxes)
    return Batch.from_lists(images, texts, regions, TOKENIZER, num_slots=6, num_regions=3)


def tiny_model(with_pooler: bool = True, with_region_head: bool = True, **cfg) -> FineGrainedCLIP:
    torch.manual_seed(0)
    return FineGrainedCLIP(
        ModelConfig(name=TINY_MODEL, pretrained=None, **cfg), with_pooler, with_region_head
    )


# --- documented commands ---------------------------------------------------------------------------

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def doc_commands() -> list[tuple[str, str]]:
    """(doc name, command line) for every command in every bash block, continuations joined."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```(?:bash|sh)\n(.*?)```", doc.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                command = line.split(" #", 1)[0].strip()
                if command and not command.startswith("#"):
                    found.append((doc.name, command))
    return found


def documented(doc: str, *words: str, replace: dict[str, str]) -> str:
    """The one command line of ``doc`` that contains every word, with the placeholders in
    ``replace`` (paths, addresses) swapped for the test's; each must be in the line, so a doc
    edit fails the test that runs the line instead of silently changing what it runs."""
    [line] = [c for d, c in doc_commands() if d == doc and all(w in c for w in words)]
    for placeholder, value in replace.items():
        assert placeholder in line, f"{doc}: {placeholder!r} not in {line!r}"
        line = line.replace(placeholder, value)
    return line


# --- S3 ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Server:
    env: dict[str, str]  # the standard AWS variables that point clients at it
    bucket: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}"

    def upload(self, folder: Path, prefix: str) -> None:
        client = boto3.client("s3")
        for path in folder.rglob("*"):
            if path.is_file():
                client.upload_file(str(path), self.bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


@contextlib.contextmanager
def s3_server(host: str) -> Iterator[S3Server]:
    """moto_server on ``host`` (loopback, or an address network namespaces reach) with one
    bucket; this process's environment points at it (dummy keys) while it runs, so Ray workers
    started meanwhile do too."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [BIN / "moto_server", "-H", host, "-p", str(port)],
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


def relay(handler, port: int, body: bytes) -> None:
    """Answer the request ``handler`` (a ``BaseHTTPRequestHandler``) holds with what the S3
    server on 127.0.0.1:``port`` answers it: the fault proxies' way of passing a request on."""
    upstream = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    upstream.request(handler.command, handler.path, body=body, headers=dict(handler.headers))
    answer = upstream.getresponse()
    data = answer.read()
    handler.send_response(answer.status)
    for name, value in answer.getheaders():
        if name.lower() not in ("content-length", "transfer-encoding", "connection"):
            handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(data)
    upstream.close()


# --- Ray -----------------------------------------------------------------------------------------


def build_shards_command(corpus: Path, out: Path, *overrides: str) -> list[str]:
    """``data_prep/build_shards.py`` on a generated corpus with the default preset, as a user runs it."""
    return [
        sys.executable,
        "data_prep/build_shards.py",
        "--config",
        "configs/prep/default.yaml",
        f"input.index={corpus}/records.jsonl",
        f"output={out}",
        *overrides,
    ]


PREP_ARGS = ("samples_per_shard=8", "existing_output=resume")  # the stopped-and-resumed prep tests


def prep_dataset(out: Path) -> dict:
    """What two prep runs of one job must agree on: the files, the manifest's run id, shards,
    totals and stats, and the drops."""
    manifest = json.loads((out / "dataset.json").read_text())
    return {
        "files": sorted(os.listdir(out)),
        **{key: manifest[key] for key in ("run_id", "shards", "totals", "shard_stats")},
        "dropped": pq.read_table(out / "dropped.parquet").to_pylist(),
    }


def ray_job_submit(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a ``ray job submit`` command from the checkout; retried while a fresh head's job
    agent is not up yet ("No available agent to submit job")."""
    for _ in range(30):
        job = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in job.stderr:
            return job
        time.sleep(2)
    return job


# --- Slurm ---------------------------------------------------------------------------------------


def slurm_env(out: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a test submits in: the run folder ``OUTPUT`` (not runs/ in the checkout),
    the job's log beside it (``SBATCH_OUTPUT``, read by :func:`job_log`) and this Python."""
    return {
        **(env or os.environ),
        "OUTPUT": str(out),
        "SBATCH_OUTPUT": f"{out}.slurm-%j.out",
        "PYTHON": sys.executable,
    }


def sbatch(
    script: str,
    out: Path,
    *overrides: str,
    wait: bool,
    nodes: int = 1,
    tasks_per_node: int = 2,
    env: dict[str, str] | None = None,
) -> str:
    """Submit ``script`` sized as the docs' CPU lines size it (the #SBATCH headers ask for 4 GPU
    nodes), with the tiny preset; returns the job id."""
    cmd = [
        "sbatch",
        "--parsable",
        f"--nodes={nodes}",
        f"--ntasks-per-node={tasks_per_node}",
        "--cpus-per-task=1",
        "--gpus-per-node=0",
        *(["--wait"] if wait else []),
        script,
        "device=cpu",
        *overrides,
    ]
    preset = "configs/train/beta_tiny.yaml" if "beta" in script else "configs/train/harmo_tiny.yaml"
    env = {**slurm_env(out, env), "CONFIG": preset}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr + job_log(out)[-4000:]
    return result.stdout.strip().split(";")[0]


def job_state(job: str, env: dict[str, str] | None = None) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=env).stdout
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def job_log(out: Path) -> str:
    """Every job's output for the run folder ``out``, oldest job first."""
    return "".join(
        p.read_text()
        for p in sorted(
            out.parent.glob(f"{out.name}.slurm-*.out"),
            key=lambda p: int(p.name.rsplit("-", 1)[1].split(".")[0]),
        )
    )


def logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


@contextlib.contextmanager
def small_disk(folder: Path, size_bytes: int) -> Iterator["SmallDisk"]:
    """A real full disk: a tmpfs of ``size_bytes`` mounted at ``folder`` (root only; a test that
    needs one skips where mounting is not allowed, saying so)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode:
        pytest.skip(f"a small disk needs a tmpfs mount, refused here: {mounted.stderr.strip()}")
    try:
        yield SmallDisk(folder)
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@dataclass
class SmallDisk:
    folder: Path

    def grow(self, size_bytes: int) -> None:
        """More space, the files kept: what freeing space does before a resume."""
        subprocess.run(["mount", "-o", f"remount,size={size_bytes}", str(self.folder)], check=True)


def ray_processes(title: bytes, under: int) -> list[int]:
    """Ray worker processes whose title starts with ``title`` (``b"ray::ShardWorker"``, an actor's
    class) among the descendants of ``under`` (a driver and the local Ray it started), not
    those of another job on this machine."""
    parents, titles = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            parents[int(pid)] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            titles[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]

    def descends(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == under:
                return True
        return False

    return [pid for pid, name in titles.items() if name.startswith(title) and descends(pid)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # reaped or a zombie: gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False
