"""A model under evaluation: any checkpoint we write, or plain open_clip weights as the baseline,
with the embeddings the metrics read (global image and text, and region features)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

from pipeline.config import InputNotFound
from pipeline.eval.data import EvalImage
from pipeline.models import FineGrainedCLIP, ModelConfig, open_clip_dir
from pipeline.models.dense import encode_image_dense
from pipeline.models.loading import load_fine_grained
from pipeline.models.regions import pool_regions
from pipeline.models.text import encode_tokens
from pipeline.models.transform import model_input_image, normalizer

log = logging.getLogger(__name__)

OPENCLIP_PREFIX = "openclip:"


def load_model(spec: str, device: torch.device) -> FineGrainedCLIP:
    """``spec``: a training run folder (its ``export/``), an export folder, or ``openclip:NAME[:TAG]``
    (open_clip's own weights, the baseline; no tag: random init, the chance-level reference)."""
    if spec.startswith(OPENCLIP_PREFIX):
        name, _, tag = spec.removeprefix(OPENCLIP_PREFIX).partition(":")
        torch.manual_seed(0)
        model = FineGrainedCLIP(
            ModelConfig(name=name, pretrained=tag or None), with_pooler=False, with_region_head=False
        )
    else:
        model = load_fine_grained(export_folder(spec))
    return model.to(device).eval()


def export_folder(spec: str) -> Path:
    """The export a run-folder or export spec names; fails naming the key when there is none."""
    path = Path(spec)
    export = path / "export" if (path / "export").is_dir() else path
    if not (export / open_clip_dir.WEIGHTS).exists():
        raise InputNotFound(
            f"checkpoints: {spec} is neither a run folder with export/ nor an export "
            "(python -m pipeline export RUN OUT makes one from any checkpoint)"
        )
    return export


@dataclass
class ImageEmbeddings:
    image: torch.Tensor  # [N, D] global, L2-normalised
    regions: list[torch.Tensor]  # per image [n_boxes, D]: RoIAlign over the dense grid, visual.proj
    head_regions: list[torch.Tensor] | None  # the same boxes through the model's region head, if any


@torch.no_grad()
def embed_images(model: FineGrainedCLIP, images: list[EvalImage], batch_size: int) -> ImageEmbeddings:
    """Global and region embeddings, the model input made as in training: the whole image resized
    to the model's square input (nothing cropped) and the boxes scaled with it."""
    visual = model.clip.visual
    size = visual.image_size[0]
    to_tensor = normalizer(visual)
    device = next(model.parameters()).device
    globals_, regions, head_regions = [], [], []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pixels = torch.stack([to_tensor(model_input_image(im.jpg, size)[0]) for im in chunk]).to(device)
        image, grid = encode_image_dense(visual, pixels, model.cfg.dense)
        globals_.append(F.normalize(image, dim=-1))
        counts = [len(im.boxes) for im in chunk]
        boxes = torch.zeros(len(chunk), max(counts + [1]), 4, device=device)
        for b, im in enumerate(chunk):
            if im.boxes:
                scale = torch.tensor([size / im.width, size / im.height] * 2, device=device)
                boxes[b, : counts[b]] = torch.tensor(im.boxes, device=device) * scale
        mask = (
            torch.arange(boxes.shape[1], device=device)[None] < torch.tensor(counts, device=device)[:, None]
        )
        features = pool_regions(grid, boxes, pixels.shape[-2:])[mask]
        regions.extend(F.normalize(features @ visual.proj, dim=-1).split(counts))
        if model.region_head is not None:
            head_regions.extend(F.normalize(model.region_head(model.clip, features), dim=-1).split(counts))
    has_head = model.region_head is not None
    return ImageEmbeddings(torch.cat(globals_), regions, head_regions if has_head else None)


@torch.no_grad()
def embed_texts(model: FineGrainedCLIP, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """[N, D] L2-normalised text embeddings; longer texts are cut at the model's context length."""
    tokenizer = open_clip.get_tokenizer(model.cfg.name, context_length=model.clip.context_length)
    out = [
        encode_tokens(model.clip, tokenizer(texts[i : i + batch_size]))
        for i in range(0, len(texts), batch_size)
    ]
    return F.normalize(torch.cat(out), dim=-1)
