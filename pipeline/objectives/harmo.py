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


def lrc_loss(
    regions: torch.Tensor,
    phrases: torch.Tensor,
    mask: torch.Tensor,
    phrase_ids: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """Lexeme-Region Contrastive: InfoNCE between every region embedding and its phrase's, [B, R, D],
    across all ranks' regions. Regions whose phrase string is identical (``phrase_ids`` [B, R])
    describe the same thing, so they are not negatives of each other ("a dog" in two images)."""
    return info_nce(
        regions.flatten(0, 1), phrases.flatten(0, 1), scale, valid=mask.flatten(), ids=phrase_ids.flatten()
    )


def gr_loss(
    regions: torch.Tensor, mask: torch.Tensor, image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Global-Region alignment: an image's regions, pooled with weights from the caption, should
    retrieve the image's global embedding among the batch's, and back.

    ḡ_i = normalize(Σ_k a_ik r_ik), a_i = softmax_k(scale · ⟨r_ik, c_i⟩) over valid regions;
    InfoNCE(ḡ, g) over the images that have at least one region.
    """
    affinity = scale * torch.einsum("brd,bd->br", regions, text)
    weights = affinity.masked_fill(~mask, torch.finfo(affinity.dtype).min).softmax(dim=-1)
    summary = F.normalize(torch.einsum("br,brd->bd", weights, regions), dim=-1)
    return info_nce(summary, image, scale, valid=mask.any(dim=-1))
