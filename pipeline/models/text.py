"""Text encoding with open_clip's text tower, on token ids or on ready-made token embeddings."""

from __future__ import annotations

import open_clip
import torch
from torch import nn


def encode_tokens(clip: open_clip.CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """[N, L] token ids → [N, D] projected text features, equal to ``clip.encode_text``.

    Texts are encoded in buckets of similar length (up to 8, 16, 32, ... tokens), each only up to
    its longest end token: the causal mask means later (padding) positions cannot change the
    result, and a phrase of a few tokens need not pay for a 77- or 248-token caption. Under
    ZeRO-3 (partitioned parameters carry ``ds_id``) empty buckets run too, so every rank calls
    the text transformer the same number of times: ZeRO-3 gathers its weights per call, and
    unequal counts would deadlock the ranks.
    """
    every_bucket = hasattr(next(clip.transformer.parameters()), "ds_id")
    eot = tokens.argmax(dim=-1)  # the end token has the largest id (open_clip's "argmax" pooling)
    buckets = length_buckets(eot, tokens.shape[1], every_bucket)
    trimmed = [tokens[rows, :length] for rows, length in buckets]
    # One lookup for all buckets (each lookup's backward writes a dense vocabulary-sized gradient),
    # on their trimmed tokens laid end to end: split views of it cost no full-size gradient each,
    # as indexing one [N, L] lookup per bucket did (a zero-filled [N, L, W] per bucket).
    embedded = clip.token_embedding(torch.cat([t.flatten() for t in trimmed]))
    pieces = embedded.split([t.numel() for t in trimmed])
    parts = [
        encode_embeddings(clip, x.view(*t.shape, embedded.shape[-1]), eot[rows])
        for (rows, _), t, x in zip(buckets, trimmed, pieces)
    ]
    order = torch.cat([rows for rows, _ in buckets])
    return torch.cat(parts).index_select(0, order.argsort())


def length_buckets(
    eot: torch.Tensor, context: int, every_bucket: bool = False
) -> list[tuple[torch.Tensor, int]]:
    """How :func:`encode_tokens` splits texts by their end-token positions ``eot`` [N]: (row
    indices, length encoded) per bucket, each up to its longest end token; ``every_bucket`` keeps
    the empty ones (no rows, length 1) for ZeRO-3."""
    buckets, lower = [], 0
    for upper in _buckets(context):
        rows = ((eot >= lower) & (eot < upper)).nonzero().squeeze(1)
        lower = upper
        if len(rows) or every_bucket:
            buckets.append((rows, int(eot[rows].max()) + 1 if len(rows) else 1))
    return buckets


def text_positions(tokens: torch.Tensor) -> tuple[int, int]:
    """(real tokens, positions encoded) when :func:`encode_tokens` encodes texts [N, L]: real ones
    are up to and including each end token; the rest of each bucket's length is padding."""
    eot = tokens.argmax(dim=-1)
    return int((eot + 1).sum()), sum(
        len(rows) * length for rows, length in length_buckets(eot, tokens.shape[1])
    )


def _buckets(context: int) -> list[int]:
    """Exclusive upper bounds of end-token positions: 8, 16, 32, ... and the context length."""
    bounds, upper = [], 8
    while upper < context:
        bounds.append(upper)
        upper *= 2
    return bounds + [context]


def encode_embeddings(clip: open_clip.CLIP, x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """[N, L, W] token embeddings → [N, D]: positions, causal transformer, read out at ``eot`` [N]."""
    length = x.shape[1]
    cast_dtype = clip.transformer.get_cast_dtype()
    x = x.to(cast_dtype) + clip.positional_embedding[:length].to(cast_dtype)
    x = clip.transformer(x, attn_mask=clip.attn_mask[:length, :length])
    x = clip.ln_final(x[torch.arange(x.shape[0], device=x.device), eot])
    proj = clip.text_projection
    return proj(x) if isinstance(proj, nn.Module) else x @ proj
