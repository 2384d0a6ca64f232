"""A random-init OWLv2 saved the way a downloaded one is: the detector grounder loads it through
``from_pretrained`` where no weights can be downloaded (tests, benchmarks).

``base`` has the architecture of ``google/owlv2-base-patch16-ensemble`` (ViT-B/16 at 960 px,
a 12-layer text tower of 16 positions); ``tiny`` a 64-pixel, 4×4-patch image side and two small
layers per tower. The tokenizer is CLIP's, built from open_clip's bundled BPE merges.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import torch
from open_clip.tokenizer import bytes_to_unicode, default_bpe

SIZES = {
    "base": {
        "image_size": 960,
        "text": {
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
        },
        "vision": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
        },
        "projection_dim": 512,
    },
    "tiny": {
        "image_size": 64,
        "text": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        "vision": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        "projection_dim": 32,
    },
}


def save_random_owlv2(path: Path, size: str) -> Path:
    """Write the model and its processor to ``path`` (seeded: the same bytes every time)."""
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
    spec = SIZES[size]
    side = spec["image_size"]
    processor = tf.Owlv2Processor(tf.Owlv2ImageProcessor(size={"height": side, "width": side}), tokenizer)
    config = tf.Owlv2Config(
        text_config={"vocab_size": len(vocab), "max_position_embeddings": 16, **spec["text"]},
        vision_config={"image_size": side, "patch_size": 16, **spec["vision"]},
        projection_dim=spec["projection_dim"],
    )
    torch.manual_seed(0)
    model = tf.Owlv2ForObjectDetection(config)
    with torch.no_grad():  # random heads saturate the sigmoids; small ones keep scores and boxes apart
        for layer in (model.box_head.dense2, model.class_head.logit_shift, model.class_head.logit_scale):
            layer.weight.normal_(std=0.02)
            layer.bias.zero_()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
