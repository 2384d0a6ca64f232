"""Region features: RoIAlign over the patch grid for boxes given in image pixels."""

from __future__ import annotations

import torch
from torchvision.ops import roi_align


def pool_regions(grid: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Patch grid [B, h, w, C] and boxes [B, R, 4] (x0, y0, x1, y1 in pixels of H×W) → [B, R, C].

    One bin per box, sampled at every patch centre it covers (``sampling_ratio=-1``), with the
    half-pixel ``aligned=True`` convention: a box covering whole patches averages exactly them.
    """
    b, h, w, c = grid.shape
    height, width = image_size
    # to patch units by Python numbers: a tensor of them on the device would be a copy that waits
    sx, sy = w / width, h / height
    x0, y0, x1, y1 = boxes.unbind(-1)
    on_grid = torch.stack([x0 * sx, y0 * sy, x1 * sx, y1 * sy], dim=-1)
    pooled = roi_align(
        grid.permute(0, 3, 1, 2),
        list(on_grid.to(grid.dtype)),
        output_size=1,
        spatial_scale=1.0,
        sampling_ratio=-1,
        aligned=True,
    )
    return pooled.view(b, -1, c)
