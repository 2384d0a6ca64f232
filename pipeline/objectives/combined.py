"""One entry for every objective: the weighted sum of the terms it names, the global one once.

clip = GC;  beta = GC + w·β-CAL;  harmo = GC + λ_LRC·LRC + λ_GR·GR;  beta+harmo = all four.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pipeline.batch import Batch
from pipeline.objectives.beta_cal import beta_cal_loss, ce_chance_and_floor, ce_query_gain
from pipeline.objectives.clip import clip_loss
from pipeline.objectives.config import ObjectiveConfig
from pipeline.objectives.harmo import gr_loss, lrc_loss, region_identity

if TYPE_CHECKING:
    from pipeline.models.fine_clip import Embeddings


def compute_loss(
    out: Embeddings, batch: Batch, cfg: ObjectiveConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(weighted total, {term name: detached value}). Losses are computed in float32.

    Under several ranks each rank returns its share; the engine's average over ranks is the loss
    of the whole gathered batch (β-CAL with scope "rank": the mean of per-rank losses), and so is
    the gradient, except GC's with ``gc_gather_grad`` false (see ``gather_without_grad``).
    """
    scale = out.logit_scale.float()
    image, text = out.image.float(), out.text.float()
    terms = {"clip": (1.0, clip_loss(image, text, scale, cfg.gc_gather_grad))}
    if cfg.uses_beta_cal:
        loss = beta_cal_loss(
            out.pooled.float(),
            out.slots.float(),
            batch.token_mask,
            out.pooled_logit_scale.float(),
            cfg.alpha,
            cfg.beta,
            cfg.variant,
            across_ranks=cfg.beta_cal_scope == "global",
            ce_padding=cfg.ce_padding,
            bce_mean=cfg.bce_mean,
        )
        terms["beta_cal"] = (cfg.beta_cal_weight, loss)
    if cfg.uses_regions:
        regions, phrases = out.regions.float(), out.phrases.float()
        mask, phrase_ids = batch.region_mask, batch.text_ids.gather(1, batch.region_slot)
        region_ids = region_identity(batch.boxes, mask)
        own = out.region_logit_scale
        s = scale if own is None else own.float()
        terms["lrc"] = (cfg.lambda_lrc, lrc_loss(regions, phrases, mask, phrase_ids, region_ids, s))
        anchor = (image.detach(), text.detach()) if cfg.gr_anchor == "fixed" else (image, text)
        terms["gr"] = (cfg.lambda_gr, gr_loss(regions, mask, region_ids, *anchor, s))
    total = sum(weight * value for weight, value in terms.values())
    return total, {name: value.detach() for name, (_, value) in terms.items()}


def loss_bounds(host_batch: Batch, cfg: ObjectiveConfig) -> dict[str, torch.Tensor]:
    """What the β-CAL value means on this batch, logged beside it: ``beta_cal_chance``,
    ``beta_cal_floor`` and ``beta_cal_query_gain``, what a query-specific pooler can win over a
    mean pool at most (CE variant; none otherwise). Made from the host copy of the batch, as
    grouping equal texts on a GPU would make the host wait for it."""
    if not (cfg.uses_beta_cal and cfg.variant == "ce"):
        return {}
    chance, floor = ce_chance_and_floor(
        host_batch.text_ids, host_batch.token_mask, cfg.alpha, cfg.beta, cfg.ce_padding
    )
    gain = ce_query_gain(host_batch.token_mask, cfg.alpha, cfg.beta)
    return {"beta_cal_chance": chance, "beta_cal_floor": floor, "beta_cal_query_gain": gain}
