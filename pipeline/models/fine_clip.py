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
from pipeline.models.pooler import INIT_LOGIT_SCALE, TextConditionedPooler, capped_scale
from pipeline.models.regions import pool_regions
from pipeline.models.text import TextPack, encode_packed, pack_texts


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
    region_logit_scale: torch.Tensor | None = None  # [] the region terms' own scale, if they have one
    phrases: torch.Tensor | None = None  # [B, R, D] the embedding of each region's phrase slot


class Plan(NamedTuple):
    """Which texts and regions of a batch one forward encodes: :meth:`FineGrainedCLIP.plan`."""

    texts: TextPack  # the text slots it encodes, packed; rows are flat slot indices b·K + k
    regions: torch.Tensor  # [M] long: flat indices b·R + r of the batch's valid region slots

    def to(self, device: torch.device | str) -> Plan:
        return Plan(self.texts.to(device), self.regions.to(device, non_blocking=True))


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
        self.pooler = (
            TextConditionedPooler(embed_dim, cfg.pooler_heads, cfg.pooler_query_scale)
            if with_pooler
            else None
        )
        self.region_head = _region_head(cfg, self.clip) if with_region_head else None

    def forward(self, batch: Batch, plan: Plan | None = None) -> Embeddings:
        """``plan``: :meth:`plan` of the batch's host copy (the training step's). Without it the
        plan is made here from ``batch``, which on a GPU makes the host wait for the device."""
        plan = self.plan(batch) if plan is None else plan
        image, grid = encode_image_dense(self.clip.visual, batch.images, self.cfg.dense)
        b, k = batch.token_mask.shape
        tokens, ends = self._look_up_tokens(plan)
        slots = F.normalize(encode_packed(self.clip, plan.texts, b * k, tokens), dim=-1).view(b, k, -1)
        pooled = pooled_scale = regions = phrases = region_scale = None
        if self.cfg.detach_vision:
            grid = grid.detach()
        if self.pooler is not None:
            pooled = F.normalize(self.pooler(slots, self.pooler_keys(grid)), dim=-1)
            pooled_scale = capped_scale(self.pooler.logit_scale)
        if self.region_head is not None:
            features = pool_regions(grid, batch.boxes, batch.images.shape[-2:]).flatten(0, 1)
            embedded = F.normalize(
                self.region_head(self.clip, features.index_select(0, plan.regions), ends), dim=-1
            )
            regions = _scatter(embedded, plan.regions, batch.region_mask.shape)
            phrases = slots.gather(1, batch.region_slot[..., None].expand(-1, -1, slots.shape[-1]))
            if self.cfg.region_temperature == "own":
                region_scale = capped_scale(self.region_head.logit_scale)
        return Embeddings(
            image=F.normalize(image, dim=-1),
            text=slots[:, 0],
            slots=slots,
            logit_scale=capped_scale(self.clip.logit_scale),
            pooled=pooled,
            pooled_logit_scale=pooled_scale,
            regions=regions,
            phrases=phrases,
            region_logit_scale=region_scale,
        )

    def pooler_keys(self, grid: torch.Tensor) -> torch.Tensor:
        """Patch grid [B, h, w, C] → [B, h·w, D]: the patches in the joint space, L2-normalised,
        what the pooler attends over (in training and in every evaluation of it)."""
        return F.normalize(grid.flatten(1, 2) @ self.clip.visual.proj, dim=-1)

    def _look_up_tokens(self, plan: Plan) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(embeddings of the packed texts' tokens, of the region head's start and end tokens or
        None), from one lookup: each lookup's backward writes a dense vocabulary-sized gradient."""
        if not isinstance(self.region_head, TextTokenRegionHead):
            return self.clip.token_embedding(plan.texts.tokens), None
        embedded = self.clip.token_embedding(torch.cat([plan.texts.tokens, self.region_head.ends]))
        return embedded[:-2], embedded[-2:]

    def plan(self, batch: Batch) -> Plan:
        """The texts (:meth:`encoded_slots`, packed) and regions this model encodes of ``batch``.
        It reads the batch's values: made on the host, the device need not wait for it."""
        slots = self.encoded_slots(batch).flatten().nonzero().squeeze(1)
        texts = pack_texts(batch.tokens.flatten(0, 1)[slots], rows=slots)
        return Plan(texts, batch.region_mask.flatten().nonzero().squeeze(1))

    def encoded_slots(self, batch: Batch) -> torch.Tensor:
        """[B, K] the text slots this model encodes: the caption, all valid slots for the pooler,
        the regions' phrases for the region head."""
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
        head = VisualRegionHead()
    else:
        tok = open_clip.get_tokenizer(cfg.name)
        head = TextTokenRegionHead(clip, cfg.num_pseudo_tokens, tok.sot_token_id, tok.eot_token_id)
    if cfg.region_temperature == "own":
        head.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))
    return head


def _scatter(values: torch.Tensor, rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Rows [N, D] to flat places ``rows`` [N] of ``shape``, zeros elsewhere: [*shape, D]."""
    out = values.new_zeros(shape.numel(), values.shape[-1]).index_copy(0, rows, values)
    return out.view(*shape, -1)
