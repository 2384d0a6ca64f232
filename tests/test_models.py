"""pipeline.models and pipeline.batch on the tiny open_clip config (random weights, CPU)."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from helpers import TOKENIZER, tiny_batch, tiny_model

from pipeline.batch import Batch, text_id
from pipeline.models import TINY_MODEL, FineGrainedCLIP, ModelConfig, create_backbone
from pipeline.models.dense import _value_only_block, encode_image_dense
from pipeline.models.long_context import interpolate_positions
from pipeline.models.pooler import TextConditionedPooler
from pipeline.models.regions import pool_regions
from pipeline.models.text import encode_tokens, pack_texts
from pipeline.objectives import ObjectiveConfig, beta_cal_loss, clip_loss, compute_loss, gr_loss, lrc_loss
from pipeline.objectives.harmo import region_identity

# each objective and the heads (pooler, region head) its model is built with
OBJECTIVE_HEADS = [
    ("clip", (False, False)),
    ("beta", (True, False)),
    ("harmo", (False, True)),
    ("beta+harmo", (True, True)),
]

# --- batch -----------------------------------------------------------------------------------------


def test_batch_from_lists_pads_and_masks():
    images = torch.zeros(2, 3, 32, 32)
    batch = Batch.from_lists(
        images,
        [["cap one", "a dog", "A Dog "], ["cap two"]],
        [[((1, 2, 3, 4), 2)], []],
        TOKENIZER,
        num_slots=4,
        num_regions=2,
    )
    assert batch.tokens.shape == (2, 4, 77) and batch.captions.shape == (2, 77)
    assert batch.token_mask.tolist() == [[True, True, True, False], [True, False, False, False]]
    assert batch.text_ids[0, 1] == batch.text_ids[0, 2] == text_id("a dog") != batch.text_ids[0, 0]
    assert batch.text_ids[1, 1:].eq(0).all()
    assert batch.boxes[0, 0].tolist() == [1, 2, 3, 4] and batch.region_slot[0, 0] == 2
    assert batch.region_mask.tolist() == [[True, False], [False, False]]
    assert torch.equal(batch.tokens[0, 1], TOKENIZER(["a dog"])[0])


@pytest.mark.parametrize(
    "texts, regions, message",
    [
        ([["c", "p", "q"]], [[]], "has 3 texts"),
        ([["c", "p"]], [[((0, 0, 1, 1), 1)] * 3], "has 3 regions"),
        ([["c", "p"]], [[((0, 0, 1, 1), 0)]], "grounded to slot 0"),
    ],
)
def test_batch_from_lists_refuses_what_does_not_fit(texts, regions, message):
    with pytest.raises(ValueError, match=message):
        Batch.from_lists(torch.zeros(1, 3, 8, 8), texts, regions, TOKENIZER, num_slots=2, num_regions=2)


def test_batch_checks_shapes():
    batch = tiny_batch(2)
    with pytest.raises(ValueError, match="batch.region_mask"):
        Batch(**{**vars(batch), "region_mask": batch.region_mask[:, :1]})


# --- config ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"context_length": 100}, "^context_length: 100 is not one of 77, 248"),
        ({"freeze_first_20": True}, "^freeze_first_20"),
        ({"dense": "mean"}, "^dense: 'mean'"),
        ({"region_head": "mlp"}, "^region_head: 'mlp'"),
        ({"num_pseudo_tokens": 0}, "^num_pseudo_tokens"),
    ],
)
def test_model_config_names_the_bad_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


# --- long context ----------------------------------------------------------------------------------


def test_interpolate_positions_matches_long_clip_recipe():
    pos = torch.randn(77, 8, dtype=torch.float64)
    new = interpolate_positions(pos)
    expected = [pos[i] for i in range(20)]
    for i in range(20, 76):  # four steps between consecutive tail positions
        expected += [pos[i] + (pos[i + 1] - pos[i]) * j / 4 for j in range(4)]
    expected += [pos[76] + (pos[76] - pos[75]) * j / 4 for j in range(4)]  # extrapolated past the end
    assert new.shape == (248, 8)
    torch.testing.assert_close(new, torch.stack(expected))


def test_long_context_keeps_short_texts_and_freezes_first_20():
    short = tiny_model(False, False).clip
    long = tiny_model(False, False, context_length=248, freeze_first_20=True).clip
    tokens = open_clip.get_tokenizer("ViT-B-16", context_length=248)(["a red ball", " ".join(["word"] * 60)])
    assert long.context_length == 248 and long.attn_mask.shape == (248, 248)
    torch.testing.assert_close(encode_tokens(long, tokens[:1]), short.encode_text(tokens[:1, :77]))
    encode_tokens(long, tokens).sum().backward()
    grad = long.positional_embedding.grad.abs().sum(dim=-1)
    assert grad[:20].eq(0).all() and grad[20:62].gt(0).all()


# --- text, dense, regions, pooler, heads -----------------------------------------------------------


def test_encode_tokens_matches_open_clip_on_the_trimmed_prefix():
    clip = tiny_model(False, False).clip
    tokens = TOKENIZER(["a", "a much longer text about a red ball left of a blue cube"])
    torch.testing.assert_close(encode_tokens(clip, tokens), clip.encode_text(tokens))


def test_encode_tokens_runs_every_bucket_only_under_zero3():
    """Under ZeRO-3 every rank must call the text transformer equally often, whatever its texts."""
    clip = tiny_model(False, False).clip
    calls = []
    clip.transformer.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    tokens = TOKENIZER(["a", "a much longer text about a red ball left of a blue cube"])
    expected = clip.encode_text(tokens)
    calls.clear()
    encode_tokens(clip, tokens)
    assert calls == [1, 1]  # buckets of up to 8 and up to 16 tokens; the 32, 64, 77 buckets are empty
    next(clip.transformer.parameters()).ds_id = 0  # what ZeRO-3 marks its partitioned parameters with
    calls.clear()
    torch.testing.assert_close(encode_tokens(clip, tokens), expected)
    assert calls == [1, 1, 0, 0, 0]


def test_dense_global_embedding_is_the_plain_one():
    clip = tiny_model(False, False).clip
    images = torch.randn(2, 3, 128, 128)
    plain = clip.encode_image(images)
    for variant in ("value_only", "last_layer"):
        image, grid = encode_image_dense(clip.visual, images, variant)
        torch.testing.assert_close(image, plain)
        assert grid.shape == (2, 8, 8, 64)
    clip.visual.output_tokens = True
    _, tokens = clip.visual(images)
    torch.testing.assert_close(encode_image_dense(clip.visual, images, "last_layer")[1].flatten(1, 2), tokens)


def test_value_only_block_keeps_patches_local():
    block = tiny_model(False, False).clip.visual.transformer.resblocks[-1]
    x = torch.randn(1, 5, 64)
    moved = x.clone()
    moved[0, 3] += 1.0
    changed = (_value_only_block(block, moved) - _value_only_block(block, x)).abs().sum(-1)[0]
    assert changed[3] > 0 and changed[0] > 0  # the patch itself, and the class token that attends to it
    assert changed[[1, 2, 4]].eq(0).all()


def test_pool_regions_averages_the_covered_patches():
    grid = torch.randn(1, 4, 8, 3)  # 64 x 128 px image, 16 px patches
    boxes = torch.tensor([[[0, 0, 128, 64], [16, 16, 32, 32], [32, 0, 64, 32]]], dtype=torch.float)
    pooled = pool_regions(grid, boxes, (64, 128))
    torch.testing.assert_close(pooled[0, 0], grid[0].mean(dim=(0, 1)))
    torch.testing.assert_close(pooled[0, 1], grid[0, 1, 1])
    torch.testing.assert_close(pooled[0, 2], grid[0, 0:2, 2:4].mean(dim=(0, 1)))


def test_pooler_is_attention_plus_mlp():
    torch.manual_seed(0)
    pooler = TextConditionedPooler(16, heads=8)
    texts, patch = torch.randn(2, 3, 16), torch.randn(2, 1, 16)
    # One patch: every query attends to it fully, so attention is out_proj(V(patch)).
    w, b = pooler.attn.in_proj_weight[32:], pooler.attn.in_proj_bias[32:]
    attended = pooler.attn.out_proj(F.linear(patch, w, b)).expand(-1, 3, -1)
    expected = attended + pooler.mlp(F.layer_norm(attended, (16,), pooler.ln.weight, pooler.ln.bias))
    torch.testing.assert_close(pooler(texts, patch), expected)
    assert pooler.logit_scale.exp().item() == pytest.approx(1 / 0.07)


def test_pooler_query_scale_multiplies_the_attention_logits():
    """With the query bias at its initial 0, scaling the queries by s is scaling W_q by s: the
    attention logits, and nothing else."""
    torch.manual_seed(0)
    scaled = TextConditionedPooler(16, heads=4, query_scale=5.0)
    plain, unscaled = TextConditionedPooler(16, heads=4), TextConditionedPooler(16, heads=4)
    plain.load_state_dict(scaled.state_dict())
    unscaled.load_state_dict(scaled.state_dict())
    with torch.no_grad():
        plain.attn.in_proj_weight[:16] *= 5.0
    texts, patches = torch.randn(2, 3, 16), torch.randn(2, 7, 16)
    torch.testing.assert_close(scaled(texts, patches), plain(texts, patches))
    assert not torch.allclose(scaled(texts, patches), unscaled(texts, patches))


def test_text_token_head_reads_pseudo_tokens_like_a_caption():
    model = tiny_model(False, True, region_head="text_tokens", num_pseudo_tokens=2)
    clip, head = model.clip, model.region_head
    tokens = TOKENIZER(["red ball"])  # [sot, red, ball, eot, 0...]: two word tokens
    with torch.no_grad():  # make W_t emit exactly those two words' embeddings
        head.proj.weight.zero_()
        head.proj.bias.copy_(clip.token_embedding(tokens[0, 1:3]).flatten())
    torch.testing.assert_close(head(clip, torch.randn(3, 64)), clip.encode_text(tokens).expand(3, -1))


# --- the model -------------------------------------------------------------------------------------


def test_model_outputs_are_normalised_and_padding_is_zero():
    batch = tiny_batch()
    out = tiny_model()(batch)
    d = out.image.shape[-1]
    for name in ("image", "text"):
        torch.testing.assert_close(getattr(out, name).norm(dim=-1), torch.ones(4))
    for name, mask in (
        ("slots", batch.token_mask),
        ("pooled", batch.token_mask),
        ("regions", batch.region_mask),
    ):
        norms = getattr(out, name).norm(dim=-1)
        torch.testing.assert_close(norms[mask], torch.ones(int(mask.sum())))
        if name != "pooled":  # pooled padding is computed (cheap) but never read
            assert norms[~mask].eq(0).all()
    assert out.phrases.shape == out.regions.shape == (4, 3, d)
    torch.testing.assert_close(out.phrases[0, 0], out.slots[0, batch.region_slot[0, 0]])


def test_region_head_alone_encodes_only_grounded_slots():
    batch = tiny_batch()
    out = tiny_model(with_pooler=False)(batch)
    grounded = torch.zeros_like(batch.token_mask)
    for b, r in batch.region_mask.nonzero().tolist():
        grounded[b, batch.region_slot[b, r]] = True
    grounded[:, 0] = True
    assert torch.equal(out.slots.norm(dim=-1) > 0, grounded)


def test_visual_region_head_is_the_visual_projection():
    batch = tiny_batch()
    model = tiny_model(with_pooler=False, region_head="visual")
    out = model(batch)
    _, grid = encode_image_dense(model.clip.visual, batch.images, "value_only")
    features = pool_regions(grid, batch.boxes, (128, 128))
    expected = F.normalize(features @ model.clip.visual.proj, dim=-1)
    torch.testing.assert_close(out.regions[batch.region_mask], expected[batch.region_mask])


def _grads(model: FineGrainedCLIP) -> dict[str, float]:
    return {n: 0.0 if p.grad is None else p.grad.abs().sum().item() for n, p in model.named_parameters()}


TERMS = {
    "clip": lambda out, batch: clip_loss(out.image, out.text, out.logit_scale),
    "beta_cal": lambda out, batch: beta_cal_loss(
        out.pooled, out.slots, batch.token_mask, out.pooled_logit_scale, 1.0, 0.5, "ce", across_ranks=False
    ),
    "lrc": lambda out, batch: lrc_loss(
        out.regions,
        out.phrases,
        batch.region_mask,
        batch.text_ids.gather(1, batch.region_slot),
        region_identity(batch.boxes, batch.region_mask),
        out.logit_scale,
    ),
    "gr": lambda out, batch: gr_loss(
        out.regions,
        batch.region_mask,
        region_identity(batch.boxes, batch.region_mask),
        out.image,
        out.text,
        out.logit_scale,
    ),
}


@pytest.mark.parametrize(
    "term, reaches, spares",
    [
        (
            "clip",
            ["clip.logit_scale", "clip.visual.proj", "clip.text_projection"],
            ["pooler.", "region_head."],
        ),
        (
            "beta_cal",
            ["pooler.", "clip.visual.proj", "clip.text_projection"],
            ["region_head.", "clip.logit_scale"],
        ),
        (
            "lrc",
            ["region_head.", "clip.logit_scale", "clip.text_projection"],
            ["pooler.", "clip.visual.proj"],
        ),
        ("gr", ["region_head.", "clip.logit_scale", "clip.visual.proj"], ["pooler."]),
    ],
)
def test_each_term_trains_what_it_should_and_nothing_else(term, reaches, spares):
    model, batch = tiny_model(), tiny_batch()
    out = model(batch)
    _, terms = compute_loss(out, batch, ObjectiveConfig(name="beta+harmo"))
    loss = TERMS[term](out, batch)
    torch.testing.assert_close(loss.detach(), terms[term])
    loss.backward()
    grads = _grads(model)
    for prefix in reaches:
        assert all(g > 0 for n, g in grads.items() if n.startswith(prefix)), prefix
    for prefix in spares:
        assert all(g == 0 for n, g in grads.items() if n.startswith(prefix)), prefix


@pytest.mark.parametrize("name, heads", OBJECTIVE_HEADS)
def test_every_parameter_of_the_model_gets_a_gradient(name, heads):
    model, batch = tiny_model(*heads), tiny_batch()
    loss, _ = compute_loss(model(batch), batch, ObjectiveConfig(name=name))
    loss.backward()
    assert [n for n, g in _grads(model).items() if g == 0] == []


@pytest.mark.parametrize("name, heads", OBJECTIVE_HEADS)
def test_a_micro_step_with_its_host_plan_reads_no_value_from_the_device(name, heads):
    """On the meta device tensors have shapes but no values: every op that must read one (nonzero,
    a boolean mask, .item(), a max that decides a shape) raises. On a GPU each of those would make
    the host wait for the device, every micro-step."""
    model, batch = tiny_model(*heads), tiny_batch()
    plan = model.plan(batch).to("meta")
    model, batch = model.to("meta"), batch.to("meta")
    loss, _ = compute_loss(model(batch, plan), batch, ObjectiveConfig(name=name))
    loss.backward()
    assert loss.device.type == "meta" and all(p.grad is not None for p in model.parameters())
    with pytest.raises(NotImplementedError, match="nonzero"):
        model(batch)  # without the plan: made from the batch, which reads its values


def test_the_plan_names_what_the_model_encodes():
    batch = tiny_batch()
    for heads in [(False, False), (True, False), (False, True)]:
        model = tiny_model(*heads)
        plan = model.plan(batch)
        assert (
            sorted(plan.texts.rows.tolist())
            == model.encoded_slots(batch).flatten().nonzero().squeeze(1).tolist()
        )
        assert plan.regions.tolist() == batch.region_mask.flatten().nonzero().squeeze(1).tolist()
        out = model(batch, plan)
        encoded = out.slots.flatten(0, 1).norm(dim=-1) > 0
        assert encoded.nonzero().squeeze(1).tolist() == sorted(plan.texts.rows.tolist())


def test_create_backbone_uses_open_clip_by_name():
    clip = create_backbone(ModelConfig(name=TINY_MODEL, pretrained=None))
    assert isinstance(clip, open_clip.CLIP) and clip.visual.proj.shape == (64, 64)


def test_encode_tokens_equals_the_full_context_pass_with_long_clip_positions():
    """Buckets trimmed to their longest text, one token lookup split between them: the outputs and
    gradients of open_clip's pass over all 248 positions."""
    clip = tiny_model(False, False, context_length=248).clip
    texts = ["a", "a red ball", " ".join(["word"] * 20), " ".join(["word"] * 100)]
    tokens = open_clip.get_tokenizer("ViT-B-16", context_length=248)(texts)
    weights = [clip.token_embedding.weight, clip.positional_embedding, clip.text_projection]
    ours, full = encode_tokens(clip, tokens), clip.encode_text(tokens)
    torch.testing.assert_close(ours, full)
    grads = zip(
        torch.autograd.grad(ours.square().sum(), weights), torch.autograd.grad(full.square().sum(), weights)
    )
    for a, b in grads:  # float32 sums over other numbers of positions: equal to 1e-6 of the largest
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))


def test_pack_counts_what_encode_tokens_encodes():
    clip = tiny_model(False, False).clip
    tokens = TOKENIZER(["a", "a red ball", "a much longer text about a red ball left of a blue cube"])
    shapes = []
    clip.transformer.register_forward_hook(lambda module, args, out: shapes.append(args[0].shape[:2]))
    encode_tokens(clip, tokens)
    short, middle, long = (tokens.argmax(dim=-1) + 1).tolist()  # real tokens, end token included
    assert (short, middle) == (3, 5) and 8 < long <= 16
    pack = pack_texts(tokens)
    assert (pack.real_tokens, pack.positions) == (short + middle + long, 2 * middle + long)  # one bucket < 8
    assert pack.positions == sum(rows * length for rows, length in shapes)


def test_region_terms_at_their_own_temperature_leave_clips_alone():
    """``region_temperature: own``: LRC and GR read the region head's scale, not CLIP's."""
    model, batch = tiny_model(region_temperature="own"), tiny_batch()
    with torch.no_grad():
        model.region_head.logit_scale.fill_(math.log(30.0))
    out = model(batch)
    torch.testing.assert_close(out.region_logit_scale, torch.tensor(30.0))
    total, terms = compute_loss(out, batch, ObjectiveConfig(name="harmo", lambda_gr=0))
    shared = TERMS["lrc"](out, batch)  # at CLIP's scale
    at_own = TERMS["lrc"](out._replace(logit_scale=out.region_logit_scale), batch)
    torch.testing.assert_close(terms["lrc"], at_own.detach())
    assert not torch.allclose(shared, at_own)
    (total - TERMS["clip"](out, batch)).backward()  # the region terms alone
    grads = _grads(model)
    assert grads["clip.logit_scale"] == 0 and grads["region_head.logit_scale"] > 0


@pytest.mark.parametrize("term", ["beta_cal", "lrc"])  # GR also reads the global embedding: trains it
def test_detach_vision_keeps_the_heads_terms_out_of_the_image_tower(term):
    model, batch = tiny_model(detach_vision=True), tiny_batch()
    out = model(batch)
    TERMS[term](out, batch).backward()
    grads = _grads(model)
    dense_only = [n for n in grads if n.startswith("clip.visual.transformer.resblocks.1.")]
    assert dense_only and all(grads[n] == 0 for n in dense_only)
    assert all(
        g > 0 for n, g in grads.items() if n.startswith("pooler." if term == "beta_cal" else "region_head.")
    )
    model.zero_grad()
    TERMS["clip"](model(batch), batch).backward()  # the global term still trains the whole tower
    assert all(_grads(model)[n] > 0 for n in dense_only)


@pytest.mark.parametrize("anchor", ["fixed", "trained"])
def test_gr_with_a_fixed_anchor_trains_the_regions_and_not_the_global_pair(anchor):
    model, batch = tiny_model(with_pooler=False), tiny_batch()
    out = model(batch)
    out.image.retain_grad()
    out.text.retain_grad()
    objective = ObjectiveConfig(name="harmo", lambda_lrc=0, gr_anchor=anchor)
    total, terms = compute_loss(out, batch, objective)
    torch.testing.assert_close(terms["gr"], TERMS["gr"](out, batch).detach())  # the same value
    (total - TERMS["clip"](out, batch)).backward()  # GR's gradient, up to rounding
    reached = [out.image.grad.abs().max() > 1e-6, out.text.grad.abs().max() > 1e-6]
    assert reached == ([False, False] if anchor == "fixed" else [True, True])
    assert all(g > 0 for n, g in _grads(model).items() if n.startswith("region_head."))
