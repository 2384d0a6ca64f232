"""Dense patch features from open_clip's ViT, with the global image embedding from the same pass.

``value_only`` (β-CLIP; FineCLIP and FG-CLIP do the same): in the last block the patch tokens skip
token mixing, x + out_proj(V(LN(x))) then the MLP, which keeps them local to their patch; the class
token keeps full attention, so the global embedding is exactly the plain model's. ``last_layer``:
the last layer's patch tokens as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch.utils.checkpoint import checkpoint


def encode_image_dense(
    visual: VisionTransformer, images: torch.Tensor, variant: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [B, 3, H, W] → (global embedding [B, D], patch grid [B, h, w, C]).

    The grid is after the final LayerNorm and before the projection ``visual.proj`` (C → D), so
    regions can be pooled from it before projecting.
    """
    x = visual._embeds(images)
    if variant == "last_layer":
        x = visual.transformer(x)
    else:
        for block in visual.transformer.resblocks[:-1]:
            x = (
                checkpoint(block, x, use_reentrant=False)
                if visual.transformer.grad_checkpointing
                else block(x)
            )
        x = _value_only_block(visual.transformer.resblocks[-1], x)
    x = visual.ln_post(x)
    h, w = images.shape[-2] // visual.patch_size[0], images.shape[-1] // visual.patch_size[1]
    return x[:, 0] @ visual.proj, x[:, 1:].unflatten(1, (h, w))


def _value_only_block(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """The last block with full attention for the class token and value-only for the patches."""
    h = block.ln_1(x)
    cls = block.attention(h[:, :1], h, h)
    width = h.shape[-1]
    values = F.linear(h[:, 1:], block.attn.in_proj_weight[2 * width :], block.attn.in_proj_bias[2 * width :])
    x = x + block.ls_1(torch.cat([cls, block.attn.out_proj(values)], dim=1))
    return x + block.ls_2(block.mlp(block.ln_2(x)))
