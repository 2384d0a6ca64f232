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


# How a box becomes something texts are scored against; which paper uses which: docs/evaluation.md.
REGION_PATHS = {
    "roi": "RoIAlign on the dense patch grid, visual projection",
    "head": "the model's HarmoCLIP region head on the RoI features",
    "crop": "the box cropped and encoded as a whole image",
    "pooler": "β-CLIP's text-conditioned pooler over the box's patches, queried with each text",
}


@dataclass
class ImageEmbeddings:
    image: torch.Tensor  # [N, D] global, L2-normalised
    regions: dict[str, list[torch.Tensor]]  # path → per image [n_boxes, D] (roi, head, crop)
    box_patches: list[torch.Tensor]  # pooler: per box, the patch tokens it covers [P, D]


def available_paths(model: FineGrainedCLIP, paths: tuple[str, ...]) -> list[str]:
    """The paths of ``paths`` this model has: ``head`` needs a region head, ``pooler`` a pooler."""
    missing = {"head": model.region_head is None, "pooler": model.pooler is None}
    return [p for p in paths if not missing.get(p, False)]


@torch.no_grad()
def embed_images(
    model: FineGrainedCLIP, images: list[EvalImage], batch_size: int, paths: tuple[str, ...] = ("roi", "head")
) -> ImageEmbeddings:
    """Global and region embeddings, the model input made as in training: the whole image resized
    to the model's square input (nothing cropped) and the boxes scaled with it."""
    paths = tuple(available_paths(model, paths))
    visual = model.clip.visual
    size = visual.image_size[0]
    device = next(model.parameters()).device
    globals_, box_patches = [], []
    regions: dict[str, list[torch.Tensor]] = {p: [] for p in paths}
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pixels = model_pixels(model, chunk)
        image, grid = encode_image_dense(visual, pixels, model.cfg.dense)
        globals_.append(F.normalize(image, dim=-1))
        boxes, mask = _input_boxes(chunk, size, device)
        counts = [len(im.boxes) for im in chunk]
        features = pool_regions(grid, boxes, pixels.shape[-2:])[mask]
        if "roi" in paths:
            regions["roi"].extend(F.normalize(features @ visual.proj, dim=-1).split(counts))
        if "head" in paths:
            regions["head"].extend(F.normalize(model.region_head(model.clip, features), dim=-1).split(counts))
        if "crop" in paths:
            regions["crop"].extend(_crops(model, chunk).split(counts))
        if "pooler" in paths:
            keys = model.pooler_keys(grid)
            for b, r in mask.nonzero().tolist():
                box_patches.append(keys[b][_covered(boxes[b, r], grid.shape[1:3], size).flatten()])
    return ImageEmbeddings(torch.cat(globals_), regions, box_patches)


def model_pixels(model: FineGrainedCLIP, images: list[EvalImage]) -> torch.Tensor:
    """[B, 3, S, S] on the model's device: each whole image resized to the square input and
    normalised, as the training loader makes it."""
    visual = model.clip.visual
    to_tensor = normalizer(visual)
    pixels = [to_tensor(model_input_image(im.jpg, visual.image_size[0])[0]) for im in images]
    return torch.stack(pixels).to(next(model.parameters()).device)


def _input_boxes(
    chunk: list[EvalImage], size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The boxes scaled to the model input, padded [B, R, 4], and which are real [B, R]."""
    counts = [len(im.boxes) for im in chunk]
    boxes = torch.zeros(len(chunk), max(counts + [1]), 4, device=device)
    for b, im in enumerate(chunk):
        if im.boxes:
            scale = torch.tensor([size / im.width, size / im.height] * 2, device=device)
            boxes[b, : counts[b]] = torch.tensor(im.boxes, device=device) * scale
    mask = torch.arange(boxes.shape[1], device=device)[None] < torch.tensor(counts, device=device)[:, None]
    return boxes, mask


def _crops(model: FineGrainedCLIP, chunk: list[EvalImage]) -> torch.Tensor:
    """[n_boxes, D]: each box cut from the stored image (at least a pixel wide) and encoded whole."""
    visual = model.clip.visual
    to_tensor, size = normalizer(visual), visual.image_size[0]
    crops = [
        to_tensor(model_input_image(im.jpg, size, (x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)))[0])
        for im in chunk
        for x0, y0, x1, y1 in im.boxes
    ]
    device = next(model.parameters()).device
    if not crops:
        return torch.zeros(0, visual.proj.shape[1], device=device)
    return F.normalize(model.clip.encode_image(torch.stack(crops).to(device)), dim=-1)


def _covered(box: torch.Tensor, grid: tuple[int, int], size: int) -> torch.Tensor:
    """[h, w] the patches whose centre lies in ``box`` (model-input pixels); none: the one under
    the box's centre, so every box pools something."""
    h, w = grid
    ys = (torch.arange(h, device=box.device) + 0.5) * size / h
    xs = (torch.arange(w, device=box.device) + 0.5) * size / w
    x0, y0, x1, y1 = box.tolist()
    inside = ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]
    if not inside.any():
        row = min(int((y0 + y1) / 2 * h / size), h - 1)
        col = min(int((x0 + x1) / 2 * w / size), w - 1)
        inside[row, col] = True
    return inside


@torch.no_grad()
def box_scores(
    model: FineGrainedCLIP, embedded: ImageEmbeddings, path: str, candidates: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Per box, its candidate texts [C, D] (L2-normalised) scored by ``path``: [C] cosines. The
    pooler pools the box's patches once per text, queried with that text."""
    if path == "pooler":
        return [
            (F.normalize(model.pooler(texts[None], patches[None])[0], dim=-1) * texts).sum(-1)
            for patches, texts in zip(embedded.box_patches, candidates)
        ]
    regions = torch.cat(embedded.regions[path])
    return [texts @ region for region, texts in zip(regions, candidates)]


@torch.no_grad()
def embed_texts(model: FineGrainedCLIP, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """[N, D] L2-normalised text embeddings; longer texts are cut at the model's context length."""
    tokenizer = open_clip.get_tokenizer(model.cfg.name, context_length=model.clip.context_length)
    out = [
        encode_tokens(model.clip, tokenizer(texts[i : i + batch_size]))
        for i in range(0, len(texts), batch_size)
    ]
    return F.normalize(torch.cat(out), dim=-1)
