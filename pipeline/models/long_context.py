"""Long-CLIP text context: 77 → 248 positions (Zhang et al. 2024, as β-CLIP uses it).

The first 20 positions are well trained and kept as they are; the remaining 57 are stretched ×4 by
linear interpolation (the last one extrapolated from the final step), so 20 + 4·57 = 248.
"""

from __future__ import annotations

import torch
from torch import nn

KEEP = 20
SHORT, LONG = 77, 248


def interpolate_positions(pos: torch.Tensor) -> torch.Tensor:
    """[77, W] positional embeddings → [248, W]: keep the first 20, interpolate the rest ×4."""
    if pos.shape[0] != SHORT:
        raise ValueError(f"expected {SHORT} positions, got {pos.shape[0]}")
    tail = pos[KEEP:]
    tail = torch.cat([tail, 2 * tail[-1:] - tail[-2:-1]])  # one step past the end to interpolate into
    t = torch.arange(4, dtype=pos.dtype, device=pos.device).view(1, 4, 1) / 4
    stretched = torch.lerp(tail[:-1, None], tail[1:, None], t)  # [57, 4, W]
    return torch.cat([pos[:KEEP], stretched.flatten(0, 1)])


def extend_context(clip: nn.Module, freeze_first: bool) -> None:
    """Give an open_clip CLIP a 248-token text context in place (positions and causal mask).

    With ``freeze_first`` a gradient hook zeroes the first 20 rows' gradient. Optimisers must then
    keep ``positional_embedding`` out of weight decay, as open_clip's ``no_weight_decay()`` says.
    """
    clip.positional_embedding = nn.Parameter(interpolate_positions(clip.positional_embedding.detach()))
    clip.attn_mask = torch.full((LONG, LONG), float("-inf"), device=clip.attn_mask.device).triu_(1)
    clip.context_length = LONG
    if freeze_first:
        clip.positional_embedding.register_hook(_zero_first_rows)


def _zero_first_rows(grad: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros_like(grad[:KEEP]), grad[KEEP:]])
