"""CLIP's symmetric InfoNCE, with features gathered from all ranks (also the base of LRC and GR)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.objectives.collectives import gather, gather_without_grad, masked_mean, world


def exclude_columns(logits: torch.Tensor, exclude: torch.Tensor | None) -> torch.Tensor:
    """``logits`` [N, M] with the ``exclude`` entries ([N, M], or [M] for whole columns) taken out
    of a softmax over rows. A finite floor rather than −inf keeps fully excluded (padding) rows
    and 0·log 0 terms finite."""
    if exclude is None:
        return logits
    return logits.masked_fill(exclude, torch.finfo(logits.dtype).min)


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-row −Σ_j p_ij log softmax_j(logits_i) for class indices [N] or probabilities [N, M];
    ``exclude`` [N, M]: columns out of the softmax (padding, duplicates of the positive)."""
    return F.cross_entropy(exclude_columns(logits, exclude), target, reduction="none")


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: torch.Tensor,
    valid: torch.Tensor | None = None,
    ids: torch.Tensor | None = None,
    gather_grad: bool = True,
) -> torch.Tensor:
    """Symmetric InfoNCE over pairs (a_i, b_i), [N, D] each, L2-normalised.

    L = ½ [ mean_i −log softmax_j(s⟨a_i, b_j⟩)[i] + mean_i −log softmax_j(s⟨b_i, a_j⟩)[i] ]

    Rows are this rank's pairs, columns every rank's (open_clip's ClipLoss with ``local_loss`` and
    ``gather_with_grad``). Pairs outside ``valid`` [N] are neither rows nor columns; columns that
    share an id with the row, ``ids`` [N] or [N, C] (C kinds of identity: the same phrase string,
    the same region), are not negatives. ``gather_grad=False`` gathers the columns as constants
    (``gather_without_grad``), as β-CLIP's official code does.
    """
    rank, _ = world()
    labels = rank * a.shape[0] + torch.arange(a.shape[0], device=a.device)
    columns_of = gather if gather_grad else gather_without_grad
    a_all, b_all = columns_of(a), columns_of(b)
    exclude = None
    if valid is not None or ids is not None:
        columns = torch.arange(a_all.shape[0], device=a.device)
        exclude = torch.zeros(a.shape[0], a_all.shape[0], dtype=torch.bool, device=a.device)
        if valid is not None:
            exclude |= ~gather(valid)[None, :]
        if ids is not None:
            ids = ids.reshape(ids.shape[0], -1)
            exclude |= (ids[:, None] == gather(ids)[None, :]).any(dim=-1)
        exclude &= columns[None, :] != labels[:, None]  # the positive always stays
    rows = valid if valid is not None else torch.ones_like(labels, dtype=torch.bool)
    a_to_b = cross_entropy(scale * a @ b_all.T, labels, exclude)
    b_to_a = cross_entropy(scale * b @ a_all.T, labels, exclude)
    return 0.5 * (masked_mean(a_to_b, rows) + masked_mean(b_to_a, rows))


def clip_loss(
    image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, gather_grad: bool = True
) -> torch.Tensor:
    """CLIP (and HarmoCLIP's GC): InfoNCE between global image and caption embeddings [B, D]."""
    return info_nce(image, text, scale, gather_grad=gather_grad)
