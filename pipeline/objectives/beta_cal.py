"""β-CAL, β-CLIP's β-Contextualised Contrastive Alignment over text-conditioned pooled embeddings.

Queries q = (b, k) are an image's valid text slots. v_q is image b pooled with text q, t_q the text;
s_qr = scale · ⟨v_q, t_r⟩. Another query of the same image is a partial positive: it describes the
same picture, at a different granularity.

* ``ce``: soft targets w_qr = α [q = r] + β [q ≠ r, same image], row-normalised; soft
  cross-entropy over rows of s (pooled → texts) and of sᵀ (text → pooled), averaged.
* ``bce``: y_qr = [same image] with weights 1 on the diagonal, β on the image's other queries,
  1 for other images.

Padded slots are never rows. Two choices about them, ours by default, the official code's
(fzohra/B-CLIP ``losses.py``, ``get_text_conditioned_image_loss``) as options:

* ``ce_padding``: ``"excluded"`` takes padded columns out of the CE softmax; ``"negatives"``
  keeps them with target 0, as the official ``k_positives_ce`` does (its log_softmax runs over
  all B·K columns). Padded slots are then negatives with whatever embedding the model gives them,
  and an image's loss depends on how much padding its batch has.
* ``bce_mean``: ``"valid"`` divides the BCE sum by the number of valid pairs; ``"all"`` by every
  entry of the (B·K)² matrix, padding included (weight 0), as the official mean-reduced
  ``binary_cross_entropy_with_logits``. ``"valid"`` is (B·K / #valid)² times ``"all"``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.objectives.clip import exclude_columns
from pipeline.objectives.collectives import gather, masked_mean, world


def beta_cal_loss(
    pooled: torch.Tensor,
    texts: torch.Tensor,
    mask: torch.Tensor,
    scale: torch.Tensor,
    alpha: float,
    beta: float,
    variant: str,
    across_ranks: bool,
    ce_padding: str = "excluded",
    bce_mean: str = "valid",
) -> torch.Tensor:
    """Pooled and text embeddings [B, K, D] (L2-normalised), slot mask [B, K] → scalar loss.

    ``across_ranks`` compares with every rank's queries (gathered); otherwise each rank's own batch,
    as in the paper.
    """
    k = mask.shape[1]
    v, t, valid = pooled.flatten(0, 1), texts.flatten(0, 1), mask.flatten()
    if across_ranks:
        v_all, t_all, valid_all = gather(v), gather(t), gather(valid)
        first = world()[0] * v.shape[0]
    else:
        v_all, t_all, valid_all, first = v, t, valid, 0
    rows = first + torch.arange(v.shape[0], device=v.device)
    if variant == "ce":
        # a query's targets all lie in its own image's K columns: keep them as [N, K], not [N, N·world]
        weights = (
            torch.where(torch.eye(k, dtype=torch.bool, device=mask.device), alpha, beta) * mask[:, None, :]
        )
        weights = (weights / weights.sum(dim=-1, keepdim=True).clamp(min=1e-12)).flatten(0, 1)
        exclude = ~valid_all if ce_padding == "excluded" else None
        image = rows // k
        to_texts = _own_image_cross_entropy(scale * v @ t_all.T, weights, image, exclude)
        to_pooled = _own_image_cross_entropy(scale * t @ v_all.T, weights, image, exclude)
        return 0.5 * (
            masked_mean(to_texts, valid, across_ranks) + masked_mean(to_pooled, valid, across_ranks)
        )
    columns = torch.arange(v_all.shape[0], device=v.device)
    diagonal = rows[:, None] == columns[None, :]
    same_image = rows[:, None] // k == columns[None, :] // k
    padded = ~valid_all[None, :].expand_as(diagonal)
    logits = scale * v @ t_all.T
    # BCE is elementwise and its targets symmetric, so the text → pooled direction (the transpose)
    # would sum the same terms again: one direction is the reference's average of both.
    weight = torch.where(same_image & ~diagonal, beta, 1.0).to(logits.dtype)
    weight = weight.masked_fill(padded | ~valid[:, None], 0)
    pairs = F.binary_cross_entropy_with_logits(
        logits, same_image.to(logits.dtype), weight=weight, reduction="none"
    ).sum(dim=-1)
    if bce_mean == "valid":
        return masked_mean(pairs / valid_all.sum().clamp(min=1), valid, across_ranks)
    return masked_mean(pairs / v_all.shape[0], torch.ones_like(valid), across_ranks)


def _own_image_cross_entropy(
    logits: torch.Tensor, weights: torch.Tensor, image: torch.Tensor, exclude: torch.Tensor | None
) -> torch.Tensor:
    """Per-row soft cross-entropy −Σ_j w_ij log softmax_j(logits_i) [N] for logits [N, M] whose
    targets ``weights`` [N, K] lie in the K columns of row i's ``image`` [N] (columns b·K .. b·K + K);
    ``exclude`` [M] takes columns out of the softmax."""
    k = weights.shape[1]
    own = image[:, None] * k + torch.arange(k, device=image.device)
    return -(weights * exclude_columns(logits, exclude).log_softmax(dim=-1).gather(1, own)).sum(dim=-1)


@torch.no_grad()
def ce_chance_and_floor(
    text_ids: torch.Tensor, mask: torch.Tensor, alpha: float, beta: float, ce_padding: str = "excluded"
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the CE variant's value means on one rank's batch: (chance, floor).

    Chance: the loss when every score is equal, ln(columns): the valid slots, or all B·K with
    ``ce_padding="negatives"``. Floor: the least loss any model can reach on the batch, since equal
    texts (``text_ids``; equal up to case) get equal embeddings. Pooled → text: text columns of one
    id tie in every row. Text → pooled: the rows of one text share a distribution, over pooled
    columns that tie within an image for one text. With tied columns the best a row can do is put
    on each group g its target mass W_g, spread evenly: −Σ_g W_g log(W_g / n_g).
    """
    valid = mask.flatten()
    image = torch.arange(mask.shape[0], device=mask.device).repeat_interleave(mask.shape[1])[valid]
    pairs = torch.stack([image, text_ids.flatten()[valid]], 1)
    # per (image, text) group g: its image, its size m, its text's count n over the batch, Z of its image
    groups, in_group, m = torch.unique(pairs, dim=0, return_inverse=True, return_counts=True)
    _, text_of, _ = torch.unique(groups[:, 1], return_inverse=True, return_counts=True)
    m = m.to(torch.float64)
    n = torch.zeros(int(text_of.max()) + 1, dtype=torch.float64, device=m.device).index_add_(0, text_of, m)
    n = n[text_of]
    z = alpha + beta * (mask.sum(dim=1).to(torch.float64)[groups[:, 0]] - 1)

    def row_sum(ties: torch.Tensor) -> torch.Tensor:
        """Per group, for a row of it: Σ_g' W_g' log(W_g' / ties_g') over its image's groups, with
        W_g' = (β m_g' + (α − β)[g' is the row's]) / Z."""
        other = torch.special.xlogy(beta * m / z, beta * m / (z * ties))
        per_image = torch.zeros(mask.shape[0], dtype=torch.float64, device=m.device)
        per_image = per_image.index_add_(0, groups[:, 0], other)[groups[:, 0]]
        own = (beta * m + alpha - beta) / z
        return per_image - other + torch.special.xlogy(own, own / ties)

    to_texts = -row_sum(n)
    f = m / n  # text → pooled: the share of a text's rows in this group's image
    per_text = torch.zeros(len(n), dtype=torch.float64, device=m.device)
    per_text = per_text.index_add_(0, text_of, -f * (row_sum(m) + torch.log(f)))[text_of]
    floor = 0.5 * (to_texts[in_group].mean() + per_text[in_group].mean())
    columns = valid.sum() if ce_padding == "excluded" else torch.tensor(valid.numel())
    return torch.log(columns.to(torch.float64)).float(), floor.float()


@torch.no_grad()
def ce_query_gain(mask: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """The most the CE variant can gain on one rank's batch from a pooler that conditions on its
    query, in nats: the best loss of a query-blind pooler (one pooled embedding per image) minus the
    best of any pooler, with all texts distinct (equal texts only lower it).

    A blind pooler's K rows of an image share one distribution, so the best is their mean target,
    uniform over the image's K slots: ln K per row, both directions. A free pooler reaches each
    row's own target, entropy H(w) with w = (α, β, …, β)/(α + β(K − 1)). At β 0.5 and K 31 the
    difference is 0.012 nats: the paper's β barely rewards a pooler for listening to the text.
    """
    k = mask.sum(dim=1).to(torch.float64)
    z = alpha + beta * (k - 1)
    entropy = -torch.special.xlogy(alpha / z, alpha / z) - (k - 1) * torch.special.xlogy(beta / z, beta / z)
    gain = torch.where(k > 0, torch.log(k.clamp(min=1)) - entropy, 0.0)
    return ((gain * k).sum() / k.sum().clamp(min=1)).float()
