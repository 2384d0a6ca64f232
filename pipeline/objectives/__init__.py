"""Training objectives: pure functions of embeddings and masks (equations: docs/objectives.md)."""

from pipeline.objectives.beta_cal import beta_cal_loss
from pipeline.objectives.clip import clip_loss, info_nce
from pipeline.objectives.combined import compute_loss
from pipeline.objectives.config import ObjectiveConfig
from pipeline.objectives.harmo import gr_loss, lrc_loss

__all__ = ["ObjectiveConfig", "beta_cal_loss", "clip_loss", "compute_loss", "gr_loss", "info_nce", "lrc_loss"]
