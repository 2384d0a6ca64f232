"""Typed configuration of the training objective (the ``objective:`` section of ``configs/train/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from pipeline.config import at_least, check_choices, positive

ObjectiveName = Literal["clip", "beta", "harmo", "beta+harmo"]
NAMES: tuple[str, ...] = get_args(ObjectiveName)


@dataclass(frozen=True)
class ObjectiveConfig:
    name: ObjectiveName = "clip"
    # β-CAL (β-CLIP): soft targets alpha on a query's own pooled embedding, beta on its image's others
    variant: Literal["ce", "bce"] = "ce"
    alpha: float = 1.0
    beta: float = 0.5
    beta_cal_scope: Literal["rank", "global"] = "rank"  # "rank": per GPU, as the paper
    beta_cal_weight: float = 1.0
    # β-CAL padding as in β-CLIP's official losses.py, if wanted (docs/objectives.md); ours by default.
    # ce_padding "negatives": padded slots stay in the CE softmax as negatives (target 0).
    ce_padding: Literal["excluded", "negatives"] = "excluded"
    # bce_mean "all": the BCE sum is divided by all (B·K)² entries, padding included.
    bce_mean: Literal["valid", "all"] = "valid"
    # GC, every objective's global term: other ranks' features carry gradient (open_clip's
    # gather_with_grad); false: gathered without it (SLIP's all_gather_batch, as β-CLIP's code).
    gc_gather_grad: bool = True
    # HarmoCLIP: loss = GC + lambda_lrc * LRC + lambda_gr * GR
    lambda_lrc: float = 1.0
    lambda_gr: float = 0.5  # 0: a FineCLIP-style region-contrastive ablation
    # GR's global image and caption embeddings: "trained", GR's gradient reaches them too; "fixed",
    # constants (GR moves the regions toward the global pair only). An ablation: on the demo neither
    # kept retrieval better on both seeds (docs/evaluation.md)
    gr_anchor: Literal["fixed", "trained"] = "trained"

    def __post_init__(self) -> None:
        check_choices(self)
        positive(self, "alpha")
        at_least(self, 0, "beta", "beta_cal_weight", "lambda_lrc", "lambda_gr")

    @property
    def uses_beta_cal(self) -> bool:
        return self.name in ("beta", "beta+harmo")

    @property
    def uses_regions(self) -> bool:
        return self.name in ("harmo", "beta+harmo")
