"""Fixtures shared by several test modules: generated shards, a loopback S3, a tiny detector."""

import gzip
from pathlib import Path

import pytest
import ray
import torch
from helpers import REPO, S3Server, s3_server
from open_clip.tokenizer import bytes_to_unicode, default_bpe

from pipeline.config import load_config
from pipeline.prep import PrepConfig, run
from pipeline.synthetic import SyntheticConfig, write_corpus

# Fixtures that start a local Ray or a moto_server: these below, and local_ray in prep test modules.
SERVICES = {"generated_shards", "s3", "local_ray"}


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
def s3() -> S3Server:
    """A real S3 server (moto_server) on 127.0.0.1 with one bucket; this process's environment
    points at it (dummy keys) for the module, so Ray workers started meanwhile do too."""
    with s3_server("127.0.0.1") as server:
        yield server


@pytest.fixture(scope="session")
def tiny_owlv2(tmp_path_factory) -> Path:
    """A random-init OWLv2 with the real CLIP tokenizer and a 64-pixel, 4×4-patch image side,
    saved the way a downloaded model is, so the detector loads it through ``from_pretrained``.

    The tokenizer is built from open_clip's bundled copy of CLIP's BPE merges: no download.
    """
    import transformers as tf

    with gzip.open(default_bpe(), "rt") as f:
        merges = [tuple(line.split()) for line in f.read().split("\n")[1 : 49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = (
        symbols
        + [s + "</w>" for s in symbols]
        + ["".join(m) for m in merges]
        + ["<|startoftext|>", "<|endoftext|>"]
    )
    tokenizer = tf.CLIPTokenizer(
        vocab={v: i for i, v in enumerate(vocab)}, merges=merges, model_max_length=16
    )
    processor = tf.Owlv2Processor(tf.Owlv2ImageProcessor(size={"height": 64, "width": 64}), tokenizer)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = tf.Owlv2Config(
        text_config={"vocab_size": len(vocab), "max_position_embeddings": 16, **small},
        vision_config={"image_size": 64, "patch_size": 16, **small},
        projection_dim=32,
    )
    torch.manual_seed(0)
    model = tf.Owlv2ForObjectDetection(config)
    with torch.no_grad():  # random heads saturate the sigmoids; small ones keep scores and boxes apart
        for layer in (model.box_head.dense2, model.class_head.logit_shift, model.class_head.logit_scale):
            layer.weight.normal_(std=0.02)
            layer.bias.zero_()
    path = tmp_path_factory.mktemp("tiny-owlv2")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
