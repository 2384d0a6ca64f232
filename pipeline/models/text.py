"""Text encoding with open_clip's text tower, on token ids or on ready-made token embeddings.

Texts are encoded packed: in buckets of similar length (up to 8, 16, 32, ... tokens), each only up
to its longest end token. The causal mask means later (padding) positions cannot change the
result, and a phrase of a few tokens need not pay for a 77- or 248-token caption. The packing
reads token values, so :func:`pack_texts` runs where the tokens are: on the host's copy of a
batch, the device never waits for it.
"""

from __future__ import annotations

from typing import NamedTuple

import open_clip
import torch
from torch import nn


class TextPack(NamedTuple):
    """Texts laid out for :func:`encode_packed`, bucket after bucket."""

    tokens: torch.Tensor  # [T] long: each text's tokens cut to its bucket's length, end to end
    eot: torch.Tensor  # [N] long: each packed text's end-token position
    rows: torch.Tensor  # [N] long: the output row each packed text goes to
    buckets: tuple[tuple[int, int], ...]  # (texts, length) of every bucket, empty ones included

    def to(self, device: torch.device | str) -> TextPack:
        return self._replace(
            tokens=self.tokens.to(device, non_blocking=True),
            eot=self.eot.to(device, non_blocking=True),
            rows=self.rows.to(device, non_blocking=True),
        )

    @property
    def positions(self) -> int:
        """Token positions the text transformer runs on."""
        return sum(texts * length for texts, length in self.buckets)

    @property
    def real_tokens(self) -> int:
        """Tokens up to and including each end token (the rest of ``positions`` is padding)."""
        return int((self.eot + 1).sum())


def pack_texts(tokens: torch.Tensor, rows: torch.Tensor | None = None) -> TextPack:
    """Token ids [N, L] → their :class:`TextPack`; text i goes to output row ``rows[i]`` (default i)."""
    eot = tokens.argmax(dim=-1)  # the end token has the largest id (open_clip's "argmax" pooling)
    rows = torch.arange(len(tokens)) if rows is None else rows
    members, buckets, lower = [], [], 0
    for upper in _bounds(tokens.shape[1]):
        bucket = ((eot >= lower) & (eot < upper)).nonzero().squeeze(1)
        lower = upper
        members.append(bucket)
        buckets.append((len(bucket), int(eot[bucket].max()) + 1 if len(bucket) else 1))
    flat = torch.cat([tokens[m, :length].flatten() for m, (_, length) in zip(members, buckets)])
    order = torch.cat(members)
    return TextPack(flat, eot[order], rows.to(order.device)[order], tuple(buckets))


def encode_packed(
    clip: open_clip.CLIP, pack: TextPack, num_rows: int, embedded: torch.Tensor | None = None
) -> torch.Tensor:
    """Packed texts → [num_rows, D] projected text features at their ``pack.rows``, zeros elsewhere.

    One token lookup for all buckets, split into views per bucket: each lookup's backward writes
    a dense vocabulary-sized gradient. ``embedded``: ``pack.tokens`` already looked up, by a
    caller that looks up more tokens in the same call. Under ZeRO-3 (partitioned parameters carry
    ``ds_id``) empty buckets run too, so every rank calls the text transformer the same number of
    times: ZeRO-3 gathers its weights per call, and unequal counts would deadlock the ranks.
    """
    every_bucket = hasattr(next(clip.transformer.parameters()), "ds_id")
    embedded = clip.token_embedding(pack.tokens) if embedded is None else embedded
    pieces = embedded.split([texts * length for texts, length in pack.buckets])
    ends = pack.eot.split([texts for texts, _ in pack.buckets])
    out = torch.cat(
        [
            encode_embeddings(clip, x.view(texts, length, embedded.shape[-1]), eot)
            for (texts, length), x, eot in zip(pack.buckets, pieces, ends)
            if texts or every_bucket
        ]
    )
    return out.new_zeros(num_rows, out.shape[-1]).index_copy(0, pack.rows, out)


def encode_tokens(clip: open_clip.CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """[N, L] token ids → [N, D] projected text features, equal to ``clip.encode_text``; packed
    where the tokens are (pass the host's tokens and the device never waits), encoded on the
    model's device."""
    pack = pack_texts(tokens).to(clip.token_embedding.weight.device)
    return encode_packed(clip, pack, len(tokens))


def _bounds(context: int) -> list[int]:
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
