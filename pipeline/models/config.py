"""Typed configuration of the model (the ``model:`` section of ``configs/train/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.config import at_least, check_choices


@dataclass(frozen=True)
class ModelConfig:
    name: str = "ViT-B-16-quickgelu"  # open_clip model name; "FG-Tiny-16" is a bundled CPU-sized one
    pretrained: str | None = "openai"  # open_clip pretrained tag or checkpoint path; None: random init
    context_length: Literal[77, 248] = 77  # 248: Long-CLIP positional interpolation
    freeze_first_20: bool = False  # Long-CLIP: the first 20 (well-trained) positions get no updates
    dense: Literal["value_only", "last_layer"] = "value_only"  # patch features, see models/dense.py
    # the pooler and the region head read the patch grid as a constant: their terms train the heads
    # and the text tower, not the image tower (β-CLIP's --detach-vision-for-tcil, off in its scripts)
    detach_vision: bool = False
    pooler_heads: int = 8  # β-CLIP text-conditioned pooler
    # multiplies the pooler's queries, so its attention logits (query bias 0 at init): 1 as β-CLIP.
    # Unit-norm texts and patches give logits near 0, a uniform pool (docs/evaluation.md)
    pooler_query_scale: float = 1.0
    region_head: Literal["visual", "text_tokens"] = "text_tokens"  # HarmoCLIP region → joint space
    # LRC and GR at CLIP's temperature, or at the region head's own (init 1/0.07, capped at 100)
    region_temperature: Literal["shared", "own"] = "shared"
    num_pseudo_tokens: int = 4  # text_tokens head: pseudo-token embeddings per region

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name: required (an open_clip model name)")
        check_choices(self)
        if self.freeze_first_20 and self.context_length != 248:
            raise ValueError("freeze_first_20: only applies with context_length 248")
        at_least(self, 1, "pooler_heads", "num_pseudo_tokens")
        if not self.pooler_query_scale > 0:
            raise ValueError(f"pooler_query_scale: must be > 0, got {self.pooler_query_scale}")
        if self.num_pseudo_tokens + 2 > self.context_length:  # + start and end tokens
            raise ValueError(f"num_pseudo_tokens: {self.num_pseudo_tokens} + 2 exceeds the context")
