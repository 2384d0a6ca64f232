"""What β-CLIP's text-conditioned pooler has learnt: whether its image embedding depends on the
query at all. The β-CAL loss can reach a low value with a pooler that mean-pools the patches,
so the loss alone does not say (docs/evaluation.md, "What the pooler learns")."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipeline.eval.data import EvalImage
from pipeline.eval.model import embed_texts, model_pixels
from pipeline.models import FineGrainedCLIP
from pipeline.models.dense import encode_image_dense

MAX_QUERIES = 36  # per image, as β-CLIP's K: the caption, 5 sentences, 30 phrases


@torch.no_grad()
def pooler_diagnostic(model: FineGrainedCLIP, images: list[EvalImage], batch_size: int) -> dict[str, float]:
    """Over the images with at least two distinct texts, each pooled with each of its texts:

    * ``pooled_cosine``: mean cosine between the pooled embeddings of different texts of one
      image (1: the same embedding whatever the query, a fixed pool);
    * ``text_cosine``: the same for the texts themselves, what a query-specific pooler could follow;
    * ``attention_entropy``: per head and query, the attention's entropy over the patches / ln P
      (1: uniform, a mean pool);
    * ``peak_attention``: the largest attention weight × P (1: uniform).
    """
    stats: dict[str, list[float]] = {
        k: [] for k in ("pooled_cosine", "text_cosine", "attention_entropy", "peak_attention")
    }
    for start in range(0, len(images), batch_size):
        chunk = [im for im in images[start : start + batch_size] if len(set(im.queries)) > 1]
        if not chunk:
            continue
        grid = encode_image_dense(model.clip.visual, model_pixels(model, chunk), model.cfg.dense)[1]
        queries = [list(dict.fromkeys(im.queries))[:MAX_QUERIES] for im in chunk]
        embedded = embed_texts(model, [q for image_queries in queries for q in image_queries])
        for texts, image_patches in zip(embedded.split([len(q) for q in queries]), model.pooler_keys(grid)):
            pooled, weights = model.pooler.pool(texts[None], image_patches[None], need_weights=True)
            stats["pooled_cosine"].append(_mean_off_diagonal(F.normalize(pooled[0], dim=-1)))
            stats["text_cosine"].append(_mean_off_diagonal(texts))
            p = weights.shape[-1]
            stats["attention_entropy"].append(
                (-torch.special.xlogy(weights, weights).sum(-1) / math.log(p)).mean().item()
            )
            stats["peak_attention"].append((weights.amax(dim=-1) * p).mean().item())
    if not stats["pooled_cosine"]:
        return {}
    return {**{k: round(sum(v) / len(v), 4) for k, v in stats.items()}, "images": len(stats["pooled_cosine"])}


def _mean_off_diagonal(unit: torch.Tensor) -> float:
    """Mean cosine between distinct rows of [K, D] unit vectors."""
    k = unit.shape[0]
    return ((unit @ unit.T).sum() - k).item() / (k * (k - 1))
