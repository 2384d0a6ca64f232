"""Typed configuration of the training objective (``configs/objective/*.yaml``, key ``objective``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NAMES = ("clip", "beta", "harmo", "beta+harmo")


@dataclass(frozen=True)
class ObjectiveConfig:
    name: Literal["clip", "beta", "harmo", "beta+harmo"] = "clip"
    # β-CAL (β-CLIP): soft targets alpha on a query's own pooled embedding, beta on its image's others
    variant: Literal["ce", "bce"] = "ce"
    alpha: float = 1.0
    beta: float = 0.5
    beta_cal_scope: Literal["rank", "global"] = "rank"  # "rank": per GPU, as the paper
    beta_cal_weight: float = 1.0
    # HarmoCLIP: loss = GC + lambda_lrc * LRC + lambda_gr * GR
    lambda_lrc: float = 1.0
    lambda_gr: float = 0.5  # 0: a FineCLIP-style region-contrastive ablation

    def __post_init__(self) -> None:
        choices = {"name": NAMES, "variant": ("ce", "bce"), "beta_cal_scope": ("rank", "global")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"objective.{key}: {getattr(self, key)!r} is not one of {'|'.join(allowed)}")
        if self.alpha <= 0:
            raise ValueError(f"objective.alpha: must be > 0, got {self.alpha}")
        for key in ("beta", "beta_cal_weight", "lambda_lrc", "lambda_gr"):
            if getattr(self, key) < 0:
                raise ValueError(f"objective.{key}: must be >= 0, got {getattr(self, key)}")

    @property
    def uses_beta_cal(self) -> bool:
        return self.name in ("beta", "beta+harmo")

    @property
    def uses_regions(self) -> bool:
        return self.name in ("harmo", "beta+harmo")
