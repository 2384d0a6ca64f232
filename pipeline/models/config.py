"""Typed configuration of the model (``configs/model/*.yaml``, key ``model``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CONTEXT_LENGTHS = (77, 248)
DENSE_VARIANTS = ("value_only", "last_layer")
REGION_HEADS = ("visual", "text_tokens")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "ViT-B-16-quickgelu"  # open_clip model name; "FG-Tiny-16" is a bundled CPU-sized one
    pretrained: str | None = "openai"  # open_clip pretrained tag or checkpoint path; None: random init
    context_length: Literal[77, 248] = 77  # 248: Long-CLIP positional interpolation
    freeze_first_20: bool = False  # Long-CLIP: the first 20 (well-trained) positions get no updates
    dense: Literal["value_only", "last_layer"] = "value_only"  # patch features, see models/dense.py
    pooler_heads: int = 8  # β-CLIP text-conditioned pooler
    region_head: Literal["visual", "text_tokens"] = "text_tokens"  # HarmoCLIP region → joint space
    num_pseudo_tokens: int = 4  # text_tokens head: pseudo-token embeddings per region

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("model.name: required (an open_clip model name)")
        if self.context_length not in CONTEXT_LENGTHS:
            raise ValueError(f"model.context_length: {self.context_length!r} is not one of 77|248")
        if self.freeze_first_20 and self.context_length != 248:
            raise ValueError("model.freeze_first_20: only applies with context_length 248")
        if self.dense not in DENSE_VARIANTS:
            raise ValueError(f"model.dense: {self.dense!r} is not one of {'|'.join(DENSE_VARIANTS)}")
        if self.pooler_heads < 1:
            raise ValueError(f"model.pooler_heads: must be >= 1, got {self.pooler_heads}")
        if self.region_head not in REGION_HEADS:
            raise ValueError(
                f"model.region_head: {self.region_head!r} is not one of {'|'.join(REGION_HEADS)}"
            )
        if self.num_pseudo_tokens < 1:
            raise ValueError(f"model.num_pseudo_tokens: must be >= 1, got {self.num_pseudo_tokens}")
        if self.num_pseudo_tokens + 2 > self.context_length:  # + start and end tokens
            raise ValueError(f"model.num_pseudo_tokens: {self.num_pseudo_tokens} + 2 exceeds the context")
