"""pipeline.objectives against hand-computed values and independent, plain-loop implementations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.objectives import (
    ObjectiveConfig,
    beta_cal_loss,
    clip_loss,
    compute_loss,
    gr_loss,
    info_nce,
    lrc_loss,
)
from pipeline.objectives.beta_cal import ce_chance_and_floor, ce_query_gain
from pipeline.objectives.harmo import region_identity

F64 = torch.float64  # exact comparisons with the python loops below


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64), dim=-1)


def nll(logits: list[float], positive: int) -> float:
    return -logits[positive] + math.log(sum(math.exp(x) for x in logits))


# --- reference loops ------------------------------------------------------------------------------


def loop_info_nce(a, b, scale, valid, ids):
    """Symmetric InfoNCE written out pair by pair."""
    keep = [i for i in range(len(a)) if valid[i]]
    total = 0.0
    for x, y in ((a, b), (b, a)):
        for i in keep:
            cols = [j for j in keep if j == i or ids[j] != ids[i]]
            total += nll([scale * float(x[i] @ y[j]) for j in cols], cols.index(i)) / len(keep)
    return total / 2


def loop_beta_cal(pooled, texts, mask, scale, alpha, beta, variant):
    bsz, k = mask.shape
    queries = [(b, q) for b in range(bsz) for q in range(k) if mask[b, q]]
    total = 0.0
    for i, (bi, qi) in enumerate(queries):

        def weight(j, i=i, bi=bi):
            bj, _ = queries[j]
            return alpha if j == i else beta if bj == bi else 0.0

        if variant == "ce":
            target = [weight(j) for j in range(len(queries))]
            target = [w / sum(target) for w in target]
            for x, y in ((pooled, texts), (texts, pooled)):
                logits = [scale * float(x[bi, qi] @ y[q]) for q in queries]
                log_z = math.log(sum(math.exp(v) for v in logits))
                total -= sum(w * (v - log_z) for w, v in zip(target, logits)) / len(queries) / 2
        else:
            for j, (bj, qj) in enumerate(queries):
                s = scale * float(pooled[bi, qi] @ texts[bj, qj])
                y, w = (1.0, 1.0 if j == i else beta) if bj == bi else (0.0, 1.0)
                total += (
                    w
                    * -(
                        y * math.log(torch.sigmoid(torch.tensor(s)))
                        + (1 - y) * math.log(1 - torch.sigmoid(torch.tensor(s)))
                    )
                    / len(queries) ** 2
                )
    return total


# --- clip ------------------------------------------------------------------------------------------


def test_clip_loss_by_hand():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64)
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=F64)
    # image→text logits [[1, .6], [0, .8]], text→image its transpose [[1, 0], [.6, .8]]; scale 2.
    expected = (nll([2, 1.2], 0) + nll([0, 1.6], 1) + nll([2, 0], 0) + nll([1.2, 1.6], 1)) / 4
    assert clip_loss(image, text, torch.tensor(2.0)).item() == pytest.approx(expected)


def test_info_nce_matches_loop_with_masks_and_duplicate_ids():
    a, b = unit(6, 8, seed=1), unit(6, 8, seed=2)
    valid = torch.tensor([True, True, False, True, True, True])
    ids = torch.tensor([1, 2, 1, 3, 2, 4])  # rows 1 and 4 share a phrase; row 2 is padding
    expected = loop_info_nce(a, b, 3.0, valid.tolist(), ids.tolist())
    assert info_nce(a, b, torch.tensor(3.0), valid, ids).item() == pytest.approx(expected)


def test_info_nce_padding_changes_nothing():
    a, b = unit(4, 8, seed=3), unit(4, 8, seed=4)
    scale = torch.tensor(5.0)
    padded_a = torch.cat([a, unit(3, 8, seed=5)])
    padded_b = torch.cat([b, torch.zeros(3, 8, dtype=F64)])
    valid = torch.tensor([True] * 4 + [False] * 3)
    assert info_nce(padded_a, padded_b, scale, valid).item() == pytest.approx(info_nce(a, b, scale).item())


# --- β-CAL -----------------------------------------------------------------------------------------


def test_beta_cal_ce_by_hand():
    # One image, two queries, orthogonal: s = scale · I. Targets (α, β)/(α+β) per row.
    pooled = texts = torch.eye(2, dtype=F64)[None]
    alpha, beta, s = 1.0, 0.5, 2.0
    p_own = math.exp(s) / (math.exp(s) + 1)
    row = -(alpha * math.log(p_own) + beta * math.log(1 - p_own)) / (alpha + beta)
    loss = beta_cal_loss(
        pooled, texts, torch.ones(1, 2, dtype=torch.bool), torch.tensor(s), alpha, beta, "ce", False
    )
    assert loss.item() == pytest.approx(row)


def test_beta_cal_bce_by_hand():
    # Two images with one query each: diagonal positives (weight 1), cross-image negatives (weight 1).
    pooled = texts = torch.eye(2, dtype=F64)[:, None]
    s = 2.0
    expected = (2 * -math.log(torch.sigmoid(torch.tensor(s))) + 2 * -math.log(1 - 0.5)) / 4
    loss = beta_cal_loss(
        pooled, texts, torch.ones(2, 1, dtype=torch.bool), torch.tensor(s), 1.0, 0.5, "bce", False
    )
    assert loss.item() == pytest.approx(expected)


@pytest.mark.parametrize("variant", ["ce", "bce"])
def test_beta_cal_matches_loop(variant):
    pooled, texts = unit(3, 4, 8, seed=6), unit(3, 4, 8, seed=7)
    mask = torch.tensor([[True, True, True, False], [True, False, False, False], [True, True, False, False]])
    expected = loop_beta_cal(pooled, texts, mask, 4.0, 1.0, 0.3, variant)
    loss = beta_cal_loss(pooled, texts, mask, torch.tensor(4.0), 1.0, 0.3, variant, across_ranks=False)
    assert loss.item() == pytest.approx(expected)


@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    extra=st.integers(0, 3),
    variant=st.sampled_from(["ce", "bce"]),
    seed=st.integers(0, 1000),
)
def test_beta_cal_padding_changes_nothing(lengths, extra, variant, seed):
    """Padding slots, whatever they hold, leave the loss as it is (the reference code's would not)."""
    k = max(lengths)
    mask = torch.tensor([[q < n for q in range(k)] for n in lengths])
    pooled, texts = (
        unit(len(lengths), k + extra, 8, seed=seed),
        unit(len(lengths), k + extra, 8, seed=seed + 1),
    )
    padded = torch.cat([mask, torch.zeros(len(lengths), extra, dtype=torch.bool)], dim=1)
    scale = torch.tensor(3.0)
    tight = beta_cal_loss(pooled[:, :k], texts[:, :k], mask, scale, 1.0, 0.5, variant, False)
    loose = beta_cal_loss(pooled, texts, padded, scale, 1.0, 0.5, variant, False)
    assert loose.item() == pytest.approx(tight.item())


def test_beta_cal_bce_mean_over_valid_pairs_or_all_entries_by_hand():
    # Image 0 has queries e1, e2; image 1 has e3 and a padded slot holding e1 (weight 0 wherever it
    # is). s = 2·I over the 3 valid queries: 3 diagonal positives at logit 2, −log σ(2) each; the
    # 2 same-image pairs (weight β = 0.5) and 4 cross-image pairs (weight 1) at logit 0, log 2 each.
    e1, e2, e3 = torch.eye(3, dtype=F64)
    pooled = texts = torch.stack([torch.stack([e1, e2]), torch.stack([e3, e1])])
    mask = torch.tensor([[True, True], [True, False]])
    total = 3 * math.log(1 + math.exp(-2)) + (2 * 0.5 + 4) * math.log(2)
    # "valid": 3 × 3 valid pairs; "all": the official mean over all (B·K)² = 4 × 4 entries.
    for bce_mean, entries in (("valid", 9), ("all", 16)):
        loss = beta_cal_loss(
            pooled, texts, mask, torch.tensor(2.0), 1.0, 0.5, "bce", False, bce_mean=bce_mean
        )
        assert loss.item() == pytest.approx(total / entries)


def test_beta_cal_ce_with_padded_slots_as_negatives_by_hand():
    # One image: queries e1, e2 and a padded slot as the model fills it, text 0 and pooled e1 (the
    # pooler answers a zero query too). s = 2, α = 1, β = 0.5: targets (2/3, 1/3, 0), (1/3, 2/3, 0),
    # so a row with logits (x, y, ·) costs log Z − (2x + y)/3 or log Z − (x + 2y)/3 = log Z − 4/3.
    e1, e2 = torch.eye(2, dtype=F64)
    pooled = torch.stack([e1, e2, e1])[None]
    texts = torch.stack([e1, e2, torch.zeros(2, dtype=F64)])[None]
    mask = torch.tensor([[True, True, False]])
    e = math.exp(2)
    # pooled → texts rows (2, 0, 0), (0, 2, 0): Z = e² + 2 each; text → pooled rows (2, 0, 2),
    # (0, 2, 0): Z = 2e² + 1 and e² + 2 (the official log_softmax over all B·K columns).
    negatives = 0.5 * (math.log(e + 2) + 0.5 * (math.log(2 * e + 1) + math.log(e + 2))) - 4 / 3
    excluded = math.log(e + 1) - 4 / 3  # the padded column left out: Z = e² + 1 everywhere
    for ce_padding, expected in (("negatives", negatives), ("excluded", excluded)):
        loss = beta_cal_loss(
            pooled, texts, mask, torch.tensor(2.0), 1.0, 0.5, "ce", False, ce_padding=ce_padding
        )
        assert loss.item() == pytest.approx(expected)


# --- HarmoCLIP -------------------------------------------------------------------------------------

E1, E2, E3 = torch.eye(3, dtype=F64)
ZERO = torch.zeros(3, dtype=F64)


def test_region_identity_is_the_box_within_an_image():
    x, y = [1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 9.0, 9.0]
    boxes = torch.tensor([[x, x, y, x], [x, [0.0] * 4, [0.0] * 4, [0.0] * 4]])
    mask = torch.tensor([[True, True, True, True], [True, False, False, False]])
    ids = region_identity(boxes, mask)
    assert ids[0, 0] == ids[0, 1] == ids[0, 3]  # one box grounding three phrases
    assert len({int(ids[0, 0]), int(ids[0, 2]), int(ids[1, 0])}) == 3  # the same box elsewhere is not


def test_lrc_is_info_nce_over_valid_regions_without_duplicate_phrases():
    regions, phrases = unit(2, 3, 8, seed=8), unit(2, 3, 8, seed=9)
    mask = torch.tensor([[True, True, False], [True, False, True]])
    ids = torch.tensor([[7, 8, 0], [7, 0, 9]])  # "a dog" (7) in both images
    expected = loop_info_nce(
        regions.flatten(0, 1), phrases.flatten(0, 1), 2.0, mask.flatten().tolist(), ids.flatten().tolist()
    )
    distinct = torch.arange(6).view(2, 3)
    assert lrc_loss(regions, phrases, mask, ids, distinct, torch.tensor(2.0)).item() == pytest.approx(
        expected
    )


def test_lrc_by_hand_with_a_shared_region_and_a_shared_phrase():
    # Pairs (region, phrase): 0 (A, "a dog"), 1 (A, "the animal"), 2 (C, "a ball") in image 0,
    # 3 (D, "a dog") in image 1. Pairs 0 and 1 share a region, 0 and 3 a phrase string: those are
    # out of each other's softmax. Phrase embeddings: e1, (.6, .8, 0), e2, (0, .6, .8).
    regions = torch.stack([torch.stack([E1, E1, E2]), torch.stack([E3, ZERO, ZERO])])
    animal, dog = torch.tensor([0.6, 0.8, 0.0], dtype=F64), torch.tensor([0.0, 0.6, 0.8], dtype=F64)
    phrases = torch.stack([torch.stack([E1, animal, E2]), torch.stack([dog, ZERO, ZERO])])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    phrase_ids = torch.tensor([[7, 8, 9], [7, 0, 0]])
    region_ids = torch.tensor([[0, 0, 2], [3, 4, 5]])
    # s = 2; row i lists s⟨x_i, y_j⟩ over the columns j it keeps, in order.
    region_to_phrase = nll([2, 0], 0) + nll([1.2, 0, 0], 0) + nll([0, 1.6, 2, 1.2], 2) + nll([0, 0, 1.6], 2)
    phrase_to_region = nll([2, 0], 0) + nll([1.2, 1.6, 0], 0) + nll([0, 0, 2, 0], 2) + nll([0, 1.2, 1.6], 2)
    expected = (region_to_phrase + phrase_to_region) / 8
    loss = lrc_loss(regions, phrases, mask, phrase_ids, region_ids, torch.tensor(2.0))
    assert loss.item() == pytest.approx(expected)


def test_lrc_of_a_region_shared_by_two_phrases_reaches_zero():
    # Image 0: "a dog" and "the animal" grounded to one region, image 1: "a cat" to another; the
    # embeddings are perfect (each phrase equals its region). Both directions are alike here.
    regions = phrases = torch.stack([torch.stack([E1, E1]), torch.stack([E2, ZERO])])
    mask = torch.tensor([[True, True], [True, False]])
    phrase_ids, s = torch.tensor([[7, 8], [9, 0]]), 10.0
    shared = lrc_loss(regions, phrases, mask, phrase_ids, torch.tensor([[0, 0], [2, 3]]), torch.tensor(s))
    expected = (2 * math.log(1 + math.exp(-s)) + math.log(1 + 2 * math.exp(-s))) / 3
    assert shared.item() == pytest.approx(expected) and shared.item() < 1e-3
    # Each copy its own region (the old behaviour): the copies are each other's negatives, log 2 each.
    copies = lrc_loss(regions, phrases, mask, phrase_ids, torch.tensor([[0, 1], [2, 3]]), torch.tensor(s))
    expected = (2 * math.log(2 + math.exp(-s)) + math.log(1 + 2 * math.exp(-s))) / 3
    assert copies.item() == pytest.approx(expected) and copies.item() > 2 / 3 * math.log(2)


def test_gr_by_loop():
    regions, image, text = unit(3, 2, 8, seed=10), unit(3, 8, seed=11), unit(3, 8, seed=12)
    mask = torch.tensor([[True, True], [False, False], [True, False]])
    scale = 4.0
    summaries = []
    for b in (0, 2):
        k = [r for r in range(2) if mask[b, r]]
        w = torch.softmax(torch.tensor([scale * float(regions[b, r] @ text[b]) for r in k]), dim=0)
        summaries.append(F.normalize(sum(wi * regions[b, r] for wi, r in zip(w, k)), dim=0))
    expected = loop_info_nce(torch.stack(summaries), image[[0, 2]], scale, [True, True], [0, 1])
    ids = torch.arange(6).view(3, 2)
    assert gr_loss(regions, mask, ids, image, text, torch.tensor(scale)).item() == pytest.approx(expected)


def test_gr_by_hand_counts_a_shared_region_once():
    # Image 0: region A = e1 grounding two phrases, region C = e2; caption (e1 + e2)/√2 weighs A and
    # C alike, so ḡ0 = (e1 + e2)/√2 and ⟨ḡ0, g0 = e1⟩ = 1/√2 (counting A twice: 2/√5). Image 1:
    # region e3, g1 = e3. Both directions have the logits [[s/√2, 0], [0, s]].
    regions = torch.stack([torch.stack([E1, E1, E2]), torch.stack([E3, ZERO, ZERO])])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    text = torch.stack([(E1 + E2) / math.sqrt(2), E3])
    image = torch.stack([E1, E3])
    s = 2.0
    expected = (nll([s / math.sqrt(2), 0], 0) + nll([0, s], 1)) / 2
    loss = gr_loss(regions, mask, torch.tensor([[0, 0, 2], [3, 4, 5]]), image, text, torch.tensor(s))
    assert loss.item() == pytest.approx(expected)


def test_gr_padding_regions_change_nothing():
    regions, image, text = unit(2, 3, 8, seed=13), unit(2, 8, seed=14), unit(2, 8, seed=15)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    ids, scale = torch.arange(6).view(2, 3), torch.tensor(4.0)
    garbage = regions.clone()
    garbage[~mask] = unit(3, 8, seed=16)
    assert gr_loss(garbage, mask, ids, image, text, scale).item() == pytest.approx(
        gr_loss(regions, mask, ids, image, text, scale).item()
    )


# --- config and the combined entry -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "foo"}, "^name: 'foo' is not one of 'clip', 'beta', 'harmo', 'beta+harmo'"),
        ({"variant": "mse"}, "^variant: 'mse' is not one of 'ce', 'bce'"),
        ({"beta_cal_scope": "node"}, "^beta_cal_scope"),
        ({"ce_padding": "kept"}, "^ce_padding: 'kept' is not one of 'excluded', 'negatives'"),
        ({"bce_mean": "sum"}, "^bce_mean: 'sum' is not one of 'valid', 'all'"),
        ({"alpha": 0.0}, "^alpha"),
        ({"lambda_gr": -1.0}, "^lambda_gr"),
    ],
)
def test_objective_config_names_the_bad_field(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("|", r"\|").replace("+", r"\+")):
        ObjectiveConfig(**kwargs)


def test_compute_loss_weights_terms_and_counts_the_global_term_once():
    from types import SimpleNamespace

    bsz, k, r, d = 3, 4, 2, 8
    out = SimpleNamespace(
        image=unit(bsz, d, seed=20),
        text=unit(bsz, d, seed=21),
        logit_scale=torch.tensor(3.0),
        slots=unit(bsz, k, d, seed=22),
        pooled=unit(bsz, k, d, seed=23),
        pooled_logit_scale=torch.tensor(5.0),
        regions=unit(bsz, r, d, seed=24),
        phrases=unit(bsz, r, d, seed=25),
        region_logit_scale=None,
    )
    batch = SimpleNamespace(
        token_mask=torch.ones(bsz, k, dtype=torch.bool),
        text_ids=torch.arange(bsz * k).view(bsz, k),
        boxes=torch.arange(bsz * r * 4, dtype=F64).view(bsz, r, 4),
        region_slot=torch.ones(bsz, r, dtype=torch.long),
        region_mask=torch.ones(bsz, r, dtype=torch.bool),
    )
    cfg = ObjectiveConfig(name="beta+harmo", beta_cal_weight=0.7, lambda_lrc=0.3, lambda_gr=0.2)
    total, terms = compute_loss(out, batch, cfg)
    assert set(terms) == {"clip", "beta_cal", "lrc", "gr"}
    assert terms["clip"].item() == pytest.approx(clip_loss(out.image, out.text, out.logit_scale).item())
    expected = terms["clip"] + 0.7 * terms["beta_cal"] + 0.3 * terms["lrc"] + 0.2 * terms["gr"]
    assert total.item() == pytest.approx(expected.item())
    for name, names in (
        ("clip", {"clip"}),
        ("beta", {"clip", "beta_cal"}),
        ("harmo", {"clip", "lrc", "gr"}),
    ):
        assert set(compute_loss(out, batch, ObjectiveConfig(name=name))[1]) == names


@pytest.mark.parametrize(
    "option", [{"variant": "ce", "ce_padding": "negatives"}, {"variant": "bce", "bce_mean": "all"}]
)
def test_compute_loss_passes_the_beta_cal_options(option):
    from types import SimpleNamespace

    bsz, k, d = 2, 3, 8
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = SimpleNamespace(
        image=unit(bsz, d, seed=26),
        text=unit(bsz, d, seed=27),
        logit_scale=torch.tensor(3.0),
        slots=unit(bsz, k, d, seed=28),
        pooled=unit(bsz, k, d, seed=29),
        pooled_logit_scale=torch.tensor(5.0),
    )
    _, terms = compute_loss(out, SimpleNamespace(token_mask=mask), ObjectiveConfig(name="beta", **option))
    variant, rest = option["variant"], {key: v for key, v in option.items() if key != "variant"}
    expected = beta_cal_loss(
        out.pooled, out.slots, mask, out.pooled_logit_scale, 1.0, 0.5, variant, False, **rest
    )
    assert terms["beta_cal"].item() == pytest.approx(expected.item())
    ours = beta_cal_loss(out.pooled, out.slots, mask, out.pooled_logit_scale, 1.0, 0.5, variant, False)
    assert terms["beta_cal"].item() != pytest.approx(ours.item())


def test_beta_cal_chance_and_floor_by_hand():
    """Distinct texts, α 1, β 0.5: each row's best is its soft target, entropy H(2/3, 1/3). One text
    shared by two images, β 0: the pooled row cannot tell the two equal texts apart (ln 2), nor the
    text row the two images (ln 2): half the rows pay ln 2."""
    full = torch.ones(2, 2, dtype=torch.bool)
    chance, floor = ce_chance_and_floor(torch.tensor([[1, 2], [3, 4]]), full, 1.0, 0.5)
    assert chance.item() == pytest.approx(math.log(4))
    assert floor.item() == pytest.approx(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    _, floor = ce_chance_and_floor(torch.tensor([[1, 2], [1, 4]]), full, 1.0, 0.0)
    assert floor.item() == pytest.approx(math.log(2) / 2)
    padded = torch.tensor([[True, True], [True, False]])
    assert ce_chance_and_floor(torch.tensor([[1, 2], [3, 0]]), padded, 1.0, 0.5, "negatives")[0].item() == (
        pytest.approx(math.log(4))
    )


def test_beta_cal_query_gain_is_what_a_blind_pooler_loses_over_free_scores():
    """Gradient descent on free logits, distinct texts: tied per image on the pooled side (one row
    per image, pooled → text; one column per image, text → pooled) it ends ``ce_query_gain`` above
    the free floor. By hand: K 31 at β 0.5 leaves 0.012 nats; β 0, ln K."""
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    ids = torch.arange(1, 13).view(3, 4) * mask
    alpha, beta = 1.0, 0.5
    image = torch.arange(3).repeat_interleave(4)[mask.flatten()]
    same = image[:, None] == image[None, :]
    weights = torch.where(torch.eye(len(image), dtype=torch.bool), alpha, beta) * same
    weights = weights / weights.sum(dim=1, keepdim=True)
    to_texts = torch.zeros(3, len(image), requires_grad=True)  # one row per image
    to_pooled = torch.zeros(len(image), 3, requires_grad=True)  # one column per image
    optimizer = torch.optim.Adam([to_texts, to_pooled], lr=0.2)
    for _ in range(400):
        rows = (to_texts[image], to_pooled[:, image])
        loss = 0.5 * sum(-(weights * r.log_softmax(dim=1)).sum(dim=1).mean() for r in rows)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _, floor = ce_chance_and_floor(ids, mask, alpha, beta)
    assert loss.item() - floor.item() == pytest.approx(ce_query_gain(mask, alpha, beta).item(), abs=2e-3)
    k31 = torch.ones(1, 31, dtype=torch.bool)
    assert ce_query_gain(k31, 1.0, 0.5).item() == pytest.approx(0.0116, abs=1e-4)
    assert ce_query_gain(k31, 1.0, 0.0).item() == pytest.approx(math.log(31))


def test_beta_cal_floor_is_the_minimum_over_free_scores_with_equal_texts_tied():
    """The floor equals gradient descent on free logits where only ties are imposed: pooled rows
    give one logit per text, text rows of one string share one logit per (image, text)."""
    torch.manual_seed(0)
    ids = torch.tensor([[1, 2, 3, 2], [1, 4, 0, 0], [5, 1, 6, 6]])
    mask = ids > 0
    alpha, beta = 1.0, 0.5
    image = torch.arange(3).repeat_interleave(4)[mask.flatten()]
    text = ids.flatten()[mask.flatten()]
    same = image[:, None] == image[None, :]
    weights = torch.where(torch.eye(len(text), dtype=torch.bool), alpha, beta) * same
    weights = weights / weights.sum(dim=1, keepdim=True)
    _, text_group = torch.unique(text, return_inverse=True)
    _, pair_group = torch.unique(torch.stack([image, text], 1), dim=0, return_inverse=True)
    to_texts = torch.zeros(len(text), int(text_group.max()) + 1, requires_grad=True)  # per row
    to_pooled = torch.zeros(int(text_group.max()) + 1, int(pair_group.max()) + 1, requires_grad=True)
    optimizer = torch.optim.Adam([to_texts, to_pooled], lr=0.2)
    for _ in range(400):
        rows_pt = to_texts[:, text_group]  # columns of one text tie
        rows_tp = to_pooled[text_group][:, pair_group]  # rows of one text share; an image's equal texts tie
        loss = 0.5 * sum(-(weights * r.log_softmax(dim=1)).sum(dim=1).mean() for r in (rows_pt, rows_tp))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _, floor = ce_chance_and_floor(ids, mask, alpha, beta)
    assert loss.item() == pytest.approx(floor.item(), abs=2e-3)
