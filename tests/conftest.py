"""Fixtures shared by several test modules: generated shards, a loopback S3, a tiny detector."""

import os
import subprocess
from pathlib import Path

import pytest
import ray
from helpers import PREP_ARGS, REPO, S3Server, build_shards_command, prep_dataset, s3_server

from pipeline.config import load_config
from pipeline.grounding.random_owlv2 import save_random_owlv2
from pipeline.prep.config import PrepConfig
from pipeline.prep.job import run
from pipeline.synthetic import SyntheticConfig, write_corpus

# Fixtures that start a local Ray or a moto_server.
SERVICES = {"generated_shards", "s3", "local_ray", "prep_reference"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that starts a service is an integration test: left unmarked, it stops the run here
    instead of slowing `make test-fast` down."""
    for item in items:
        if SERVICES & set(item.fixturenames) and not item.get_closest_marker("integration"):
            raise pytest.UsageError(f"{item.nodeid} starts a service: mark it @pytest.mark.integration")


@pytest.fixture(scope="session")
def generated_shards(tmp_path_factory) -> Path:
    """A small dataset made the real way: generated corpus → data prep on a local Ray."""
    root = tmp_path_factory.mktemp("generated")
    write_corpus(str(root / "corpus"), SyntheticConfig(num_records=96, seed=7))
    cfg = load_config(
        PrepConfig,
        REPO / "configs/prep/default.yaml",
        [f"input.index={root}/corpus/records.jsonl", f"output={root}/shards", "samples_per_shard=24"],
    )
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        run(cfg)
    finally:
        ray.shutdown()
    return root / "shards"


@pytest.fixture(scope="module")
def local_ray():
    """A Ray on this machine for the module's tests."""
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def s3() -> S3Server:
    """A real S3 server (moto_server) on 127.0.0.1 with one bucket; this process's environment
    points at it (dummy keys) for the module, so Ray workers started meanwhile do too."""
    with s3_server("127.0.0.1") as server:
        yield server


@pytest.fixture(scope="session")
def tiny_owlv2(tmp_path_factory) -> Path:
    """A random-init OWLv2 with the real CLIP tokenizer and a 64-pixel, 4×4-patch image side,
    saved the way a downloaded model is, so the detector loads it through ``from_pretrained``."""
    return save_random_owlv2(tmp_path_factory.mktemp("tiny-owlv2"), "tiny")


# The CLI prep job's corpus and its undisturbed dataset, shared by the tests that stop a job
# (a signal, a full disk) and resume it.


@pytest.fixture(scope="session")
def prep_corpus(tmp_path_factory) -> Path:
    """320 generated records, 6 broken: 40 shards of 8."""
    root = tmp_path_factory.mktemp("prep-corpus")
    write_corpus(str(root), SyntheticConfig(num_records=320, num_broken=6, seed=11))
    return root


@pytest.fixture(scope="session")
def prep_reference(prep_corpus, tmp_path_factory) -> dict:
    """The dataset an undisturbed ``build_shards.py`` run writes from ``prep_corpus``."""
    out = tmp_path_factory.mktemp("prep-reference") / "ds"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        build_shards_command(prep_corpus, out, *PREP_ARGS), cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return prep_dataset(out)
