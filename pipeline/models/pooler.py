"""β-CLIP's text-conditioned pooler: one query-specific image embedding per text."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from open_clip.transformer import LayerNorm, QuickGELU
from torch import nn

MAX_LOGIT_SCALE = math.log(100)
INIT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's temperature 0.07


def capped_scale(logit_scale: torch.Tensor) -> torch.Tensor:
    """exp(logit_scale) capped at 100, as CLIP trains it (no gradient while past the cap)."""
    return logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()


class TextConditionedPooler(nn.Module):
    """Cross-attention from text embeddings (queries) to patch embeddings (keys and values).

    out = A + MLP(LN(A)) with A = MultiHeadAttention(q=texts, k=v=patches), as in the β-CLIP code
    (no residual from the query: the output is image content only). Its own temperature, since
    pooled-vs-text similarities live on a different scale from the global ones.
    """

    def __init__(self, width: int, heads: int, query_scale: float = 1.0) -> None:
        super().__init__()
        self.query_scale = query_scale
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln = LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, 4 * width)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(4 * width, width)),
                ]
            )
        )
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))

    def forward(self, texts: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Texts [B, K, D] and patches [B, P, D] (both L2-normalised) → pooled [B, K, D]."""
        return self.pool(texts, patches)[0]

    def pool(
        self, texts: torch.Tensor, patches: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`forward`, and with ``need_weights`` each head's attention over the patches
        [B, heads, K, P] (what the evaluation's pooler diagnostic reads)."""
        queries = texts * self.query_scale if self.query_scale != 1 else texts
        attended, weights = self.attn(
            queries, patches, patches, need_weights=need_weights, average_attn_weights=False
        )
        return attended + self.mlp(self.ln(attended)), weights
