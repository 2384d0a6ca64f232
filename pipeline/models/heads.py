"""HarmoCLIP region heads: a pooled region feature → an embedding in the joint space."""

from __future__ import annotations

import open_clip
import torch
from torch import nn

from pipeline.models.text import encode_embeddings


class VisualRegionHead(nn.Module):
    """The plain visual projection: r = f · visual.proj (what FineCLIP and FG-CLIP do)."""

    def forward(
        self, clip: open_clip.CLIP, features: torch.Tensor, ends: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Region features [N, C] → [N, D]; ``ends`` is unused (no tokens here)."""
        return features @ clip.visual.proj


class TextTokenRegionHead(nn.Module):
    """HarmoCLIP's "Text Token Space", as we read it: a region speaks through the text encoder.

    W_t maps the region feature to ``num_tokens`` pseudo-token embeddings; they run through the
    text transformer between the start and end tokens, with positions, and are read out at the end
    token like a caption. Region and phrase embeddings then come from the same tower.
    """

    def __init__(self, clip: open_clip.CLIP, num_tokens: int, sot_id: int, eot_id: int) -> None:
        super().__init__()
        in_width, text_width = clip.visual.proj.shape[0], clip.token_embedding.embedding_dim
        self.num_tokens = num_tokens
        self.register_buffer("ends", torch.tensor([sot_id, eot_id]), persistent=False)
        self.proj = nn.Linear(in_width, num_tokens * text_width)
        # Pseudo tokens start at the scale of real token embeddings (features are LayerNormed: ~unit).
        nn.init.normal_(
            self.proj.weight, std=float(clip.token_embedding.weight.detach().std()) / in_width**0.5
        )
        nn.init.zeros_(self.proj.bias)

    def forward(
        self, clip: open_clip.CLIP, features: torch.Tensor, ends: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Region features [N, C] → [N, D]. ``ends``: the embeddings [2, W] of ``self.ends``, if
        the caller looked them up with its texts' tokens (each lookup's backward writes a dense
        vocabulary-sized gradient); else they are looked up here."""
        n = features.shape[0]
        pseudo = self.proj(features).unflatten(-1, (self.num_tokens, -1))
        ends = clip.token_embedding(self.ends) if ends is None else ends
        sot, eot = ends.to(pseudo.dtype).unsqueeze(1).unbind(0)
        x = torch.cat([sot.expand(n, 1, -1), pseudo, eot.expand(n, 1, -1)], dim=1)
        return encode_embeddings(clip, x, torch.full((n,), self.num_tokens + 1, device=x.device))
