"""HarmoCLIP's region terms (Zeng et al., arXiv 2511.22594): LRC and GR; GC is ``clip_loss``.

Neither the paper's equations nor its code (github Erosist/HarmoCLIP) could be read from here; this
is the formulation of docs/objectives.md ("HarmoCLIP, as we implement it"), built on the paper's
abstract and summary: GC + λ_LRC · LRC + λ_GR · GR, with regions reaching the text side through the
"Text Token Space" (``pipeline.models.heads``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.objectives.clip import info_nce
from pipeline.objectives.collectives import world


def region_identity(boxes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, R] long: equal exactly for region slots holding the same box of the same image, distinct
    across ranks (the index of the image in the gathered batch is part of the id); padded slots: any.

    A region grounding several phrases fills one slot per phrase (``pipeline.batch``); its copies
    pool the same features, so the box is the region's identity.
    """
    rank, _ = world()
    b, r = mask.shape
    same_box = (boxes[:, :, None] == boxes[:, None, :]).all(dim=-1) & mask[:, None, :]
    first = same_box.int().argmax(dim=-1)  # the first valid slot with this box (argmax: first maximum)
    image = rank * b + torch.arange(b, device=mask.device)
    return image[:, None] * r + first


def lrc_loss(
    regions: torch.Tensor,
    phrases: torch.Tensor,
    mask: torch.Tensor,
    phrase_ids: torch.Tensor,
    region_ids: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """Lexeme-Region Contrastive: InfoNCE between every (region, phrase) pair's embeddings, [B, R, D],
    across all ranks' pairs. Pairs are not negatives of each other when their phrase strings are
    identical (``phrase_ids`` [B, R]: "a dog" in two images) or their region is the same
    (``region_ids`` [B, R]: "a dog" and "the animal" grounded to one box). Without the latter the
    region's copies compete in the phrase→region softmax, which cannot go below log 2 for them, and
    the region→phrase softmax pits the region's own phrases against each other.
    """
    ids = torch.stack([phrase_ids, region_ids], dim=-1).flatten(0, 1)
    return info_nce(regions.flatten(0, 1), phrases.flatten(0, 1), scale, valid=mask.flatten(), ids=ids)


def distinct_regions(mask: torch.Tensor, region_ids: torch.Tensor) -> torch.Tensor:
    """[B, R] bool: ``mask`` keeping only the first slot of each region of an image."""
    r = mask.shape[1]
    earlier = torch.ones(r, r, dtype=torch.bool, device=mask.device).tril(diagonal=-1)
    copy = (region_ids[:, :, None] == region_ids[:, None, :]) & mask[:, None, :] & earlier
    return mask & ~copy.any(dim=-1)


def gr_loss(
    regions: torch.Tensor,
    mask: torch.Tensor,
    region_ids: torch.Tensor,
    image: torch.Tensor,
    text: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """Global-Region alignment: an image's regions, pooled with weights from the caption, should
    retrieve the image's global embedding among the batch's, and back.

    ḡ_i = normalize(Σ_k a_ik r_ik), a_i = softmax_k(scale · ⟨r_ik, c_i⟩) over image i's distinct
    valid regions (each ``region_ids`` once, however many phrases it grounds);
    InfoNCE(ḡ, g) over the images that have at least one region.
    """
    mask = distinct_regions(mask, region_ids)
    affinity = scale * torch.einsum("brd,bd->br", regions, text)
    weights = affinity.masked_fill(~mask, torch.finfo(affinity.dtype).min).softmax(dim=-1)
    summary = F.normalize(torch.einsum("br,brd->bd", weights, regions), dim=-1)
    return info_nce(summary, image, scale, valid=mask.any(dim=-1))
