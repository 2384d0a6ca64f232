"""The collectives the objectives need; all are no-ops in a single process.

Every rank must pass tensors of the same shape (the batch layout pads to fixed K and R).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size), (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` concatenated along dim 0, in rank order.

    Differentiable: the backward of all_gather sums, over all ranks' losses, the gradient for this
    rank's shard. With each rank's loss covering its own rows (see ``masked_mean``), the gradient
    after the engine's all-reduce average is exactly the single-process gradient of the full batch.
    """
    if world()[1] == 1:
        return x
    return _Gather.apply(x) if x.requires_grad else _all_gather(x)


def gather_without_grad(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` concatenated along dim 0, cut from the graph: SLIP's ``all_gather_batch``
    (``torch.distributed.all_gather`` has no backward), which β-CLIP's official GC loss uses.

    Every gathered row is a constant, this rank's own included, so a loss of this rank's rows
    against the gathered columns sends gradient through its rows only. The engine's average over
    ranks is then the gradient of the whole batch's loss with every column detached: of the
    single-process gradient, only the part through the rows (no fixed multiple of it). One
    process gathers nothing and so cuts nothing (``x`` itself, as ``all_gather_batch`` returns it).
    """
    if world()[1] == 1:
        return x
    return _all_gather(x)


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    shards = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(shards, x.contiguous())
    return torch.cat(shards, dim=0)


class _Gather(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient and keeps this rank's slice (an
    all-reduce rather than a reduce-scatter, which gloo lacks; the tensors are embeddings)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return _all_gather(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        rank, size = world()
        return grad.chunk(size)[rank]


def masked_mean(values: torch.Tensor, mask: torch.Tensor, across_ranks: bool = True) -> torch.Tensor:
    """Mean of ``values`` where ``mask``; ``across_ranks``: over every rank's valid entries.

    Each rank returns its share, world size × (its sum) / (all ranks' count), so the engine's
    average over ranks is the mean over the whole batch even when ranks hold different numbers of
    valid rows. Masked-out values may be anything finite; they get no gradient.
    """
    total = torch.where(mask, values, 0).sum()
    count = mask.sum()
    _, size = world()
    if across_ranks and size > 1:
        count = count.clone()
        dist.all_reduce(count)
        total = total * size
    return total / count.clamp(min=1)
