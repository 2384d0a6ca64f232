"""The model training calls: an open_clip CLIP plus the heads its objective needs."""

from __future__ import annotations

from typing import NamedTuple

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.batch import Batch
from pipeline.models.backbone import create_backbone
from pipeline.models.config import ModelConfig
from pipeline.models.dense import encode_image_dense
from pipeline.models.heads import TextTokenRegionHead, VisualRegionHead
from pipeline.models.pooler import TextConditionedPooler, capped_scale
from pipeline.models.regions import pool_regions
from pipeline.models.text import encode_tokens


class Embeddings(NamedTuple):
    """What the objectives read. Embeddings are L2-normalised; padded entries are zero.

    A NamedTuple so that DeepSpeed ZeRO-3 finds the output tensors and hooks their backward
    (it looks inside tuples and dicts, not dataclasses).
    """

    image: torch.Tensor  # [B, D] global image embeddings
    text: torch.Tensor  # [B, D] caption embeddings (slot 0)
    logit_scale: torch.Tensor  # [] CLIP's exp(logit_scale), capped at 100
    slots: torch.Tensor  # [B, K, D] text slots; only those some head reads are encoded
    pooled: torch.Tensor | None = None  # [B, K, D] text-conditioned image embedding per slot
    pooled_logit_scale: torch.Tensor | None = None  # [] the pooler's own scale
    regions: torch.Tensor | None = None  # [B, R, D] region embeddings
    phrases: torch.Tensor | None = None  # [B, R, D] the embedding of each region's phrase slot


class FineGrainedCLIP(nn.Module):
    """``clip`` (open_clip) + β-CLIP's ``pooler`` and/or HarmoCLIP's ``region_head``.

    Only the heads the objective trains are built (``ObjectiveConfig.uses_beta_cal`` and
    ``uses_regions``), so every parameter gets a gradient (DeepSpeed and DDP need no
    unused-parameter search) and a checkpoint holds nothing untrained.
    """

    def __init__(self, cfg: ModelConfig, with_pooler: bool, with_region_head: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.clip = create_backbone(cfg)
        embed_dim = self.clip.visual.proj.shape[1]
        self.pooler = TextConditionedPooler(embed_dim, cfg.pooler_heads) if with_pooler else None
        self.region_head = _region_head(cfg, self.clip) if with_region_head else None

    def forward(self, batch: Batch) -> Embeddings:
        image, grid = encode_image_dense(self.clip.visual, batch.images, self.cfg.dense)
        slots = self._encode_slots(batch)
        pooled = pooled_scale = regions = phrases = None
        if self.pooler is not None:
            patches = F.normalize(grid.flatten(1, 2) @ self.clip.visual.proj, dim=-1)
            pooled = F.normalize(self.pooler(slots, patches), dim=-1)
            pooled_scale = capped_scale(self.pooler.logit_scale)
        if self.region_head is not None:
            features = pool_regions(grid, batch.boxes, batch.images.shape[-2:])
            regions = _scatter(
                F.normalize(self.region_head(self.clip, features[batch.region_mask]), dim=-1),
                batch.region_mask,
            )
            phrases = slots.gather(1, batch.region_slot[..., None].expand(-1, -1, slots.shape[-1]))
        return Embeddings(
            image=F.normalize(image, dim=-1),
            text=slots[:, 0],
            slots=slots,
            logit_scale=capped_scale(self.clip.logit_scale),
            pooled=pooled,
            pooled_logit_scale=pooled_scale,
            regions=regions,
            phrases=phrases,
        )

    def _encode_slots(self, batch: Batch) -> torch.Tensor:
        """Encode, in one packed pass, the slots :meth:`encoded_slots` names."""
        needed = self.encoded_slots(batch)
        return _scatter(F.normalize(encode_tokens(self.clip, batch.tokens[needed]), dim=-1), needed)

    def encoded_slots(self, batch: Batch) -> torch.Tensor:
        """[B, K] the text slots this model encodes: the caption, all valid slots for the pooler,
        the regions' phrases for the region head (benchmarks count their tokens from it)."""
        needed = torch.zeros_like(batch.token_mask)
        needed[:, 0] = True
        if self.pooler is not None:
            needed |= batch.token_mask
        if self.region_head is not None:
            grounded = F.one_hot(batch.region_slot, batch.token_mask.shape[1]) * batch.region_mask[..., None]
            needed |= grounded.bool().any(dim=1) & batch.token_mask
        return needed


def _region_head(cfg: ModelConfig, clip: open_clip.CLIP) -> nn.Module:
    if cfg.region_head == "visual":
        return VisualRegionHead()
    tokenizer = open_clip.get_tokenizer(cfg.name)
    return TextTokenRegionHead(clip, cfg.num_pseudo_tokens, tokenizer.sot_token_id, tokenizer.eot_token_id)


def _scatter(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Rows [N, D] into the N True places of ``mask`` [...], zeros elsewhere: [..., D]."""
    return values.new_zeros(*mask.shape, values.shape[-1]).masked_scatter(mask[..., None], values)
