"""Text encoding with open_clip's text tower, on token ids or on ready-made token embeddings."""

from __future__ import annotations

import open_clip
import torch
from torch import nn


def encode_tokens(clip: open_clip.CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """[N, L] token ids → [N, D] projected text features, equal to ``clip.encode_text``.

    Texts are encoded in groups of similar length (up to 8, 16, 32, ... tokens), each group only
    up to its longest end token: the causal mask means later (padding) positions cannot change
    the result, and a phrase of a few tokens need not pay for a 77- or 248-token caption.
    """
    eot = tokens.argmax(dim=-1)  # the end token has the largest id (open_clip's "argmax" pooling)
    order = eot.argsort()
    groups = torch.log2(eot[order] + 1).ceil().clamp(min=3).long()
    # One lookup for all groups: each lookup's backward writes a dense vocabulary-sized gradient.
    embedded = clip.token_embedding(tokens[:, :int(eot.max()) + 1])
    features, start = [], 0
    for size in torch.unique_consecutive(groups, return_counts=True)[1].tolist():
        rows = order[start:start + size]
        length = int(eot[rows].max()) + 1
        features.append(encode_embeddings(clip, embedded[rows, :length], eot[rows]))
        start += size
    return torch.cat(features).index_select(0, order.argsort())


def encode_embeddings(clip: open_clip.CLIP, x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """[N, L, W] token embeddings → [N, D]: positions, causal transformer, read out at ``eot`` [N]."""
    length = x.shape[1]
    cast_dtype = clip.transformer.get_cast_dtype()
    x = x.to(cast_dtype) + clip.positional_embedding[:length].to(cast_dtype)
    x = clip.transformer(x, attn_mask=clip.attn_mask[:length, :length])
    x = clip.ln_final(x[torch.arange(x.shape[0], device=x.device), eot])
    proj = clip.text_projection
    return proj(x) if isinstance(proj, nn.Module) else x @ proj
