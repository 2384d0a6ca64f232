"""The optimizer's parameter groups and the warmup + cosine schedule, without an engine."""

import math

import pytest
import torch
from helpers import tiny_model

from pipeline.training.config import OptimConfig
from pipeline.training.optim import build_schedule, group_schedule, lr_at, param_groups

CFG = OptimConfig(lr=1e-5, head_lr=1e-3, weight_decay=0.1, warmup_steps=10)


def _factor(step, warmup, total):
    """Our default: warmup from lr / warmup, cosine to 0."""
    return lr_at(step, total, peak=1.0, end=0.0, warmup=warmup, start=1 / max(warmup, 1))


def test_warmup_rises_linearly_to_the_base_lr():
    assert [_factor(s, warmup=4, total=100) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_cosine_falls_from_one_to_zero_at_the_last_step_and_stays_there():
    warmup, total = 10, 110
    assert _factor(warmup, warmup, total) == 1.0
    assert _factor(warmup + 50, warmup, total) == pytest.approx(0.5)  # halfway through the decay
    assert _factor(warmup + 25, warmup, total) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert _factor(total, warmup, total) == pytest.approx(0.0)
    assert _factor(total + 5, warmup, total) == pytest.approx(0.0)  # stop_after past the end
    decay = [_factor(s, warmup, total) for s in range(warmup, total + 1)]
    assert decay == sorted(decay, reverse=True)


def test_no_warmup_starts_at_the_base_lr():
    assert _factor(0, warmup=0, total=10) == 1.0
    assert _factor(0, warmup=0, total=0) == 1.0  # a one-step run divides by nothing


def test_beta_clip_schedule_is_its_cosine_scheduler():
    """utils.cosine_scheduler(1e-5, 1e-7, epochs, n, warmup_epochs, start_warmup_value=1e-9), written
    out: np.linspace(1e-9, 1e-5, w), then 1e-7 + ½(1e-5 − 1e-7)(1 + cos(π i / (total − w)))."""
    total, w = 100, 6
    cfg = OptimConfig(
        lr=1e-5,
        lr_end=1e-7,
        warmup_steps=w,
        warmup_start_lr=1e-9,
        head_lr=1e-3,
        pooler_lr_end=1e-4,
        pooler_warmup_steps=0,
    )
    backbone, heads = group_schedule(cfg, "backbone", total), group_schedule(cfg, "pooler", total)
    linspace = [1e-9 + (1e-5 - 1e-9) * k / (w - 1) for k in range(w)]
    assert [backbone(s) for s in range(w)] == pytest.approx(linspace, rel=1e-12)
    for i in (0, 1, 47, 93):
        expected = 1e-7 + 0.5 * (1e-5 - 1e-7) * (1 + math.cos(math.pi * i / (total - w)))
        assert backbone(w + i) == pytest.approx(expected, rel=1e-12)
    assert heads(0) == 1e-3  # the pooler: no warmup (warmup_epochs=0), 1e-3 → 1e-4
    assert heads(50) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * 50 / 100)))


def test_schedule_gives_each_group_its_own_curve():
    """β-CLIP's pooler on its own schedule (no warmup, to 1e-4), a region head on the heads' (the
    backbone's warmup, to 0), the backbone on its own."""
    cfg = OptimConfig(lr=1e-5, head_lr=1e-3, warmup_steps=10, pooler_warmup_steps=0, pooler_lr_end=1e-4)
    model = tiny_model(with_pooler=True, with_region_head=True)
    optimizer = torch.optim.AdamW(param_groups(model, cfg))
    schedule = build_schedule(optimizer, cfg, total_steps=50)
    curves = {kind: group_schedule(cfg, kind, 50) for kind in ("backbone", "pooler", "heads")}
    assert (
        curves["pooler"](0) == 1e-3
        and curves["heads"](0) == pytest.approx(1e-4)
        and curves["pooler"](50) == 1e-4
    )
    for step in range(50):
        for group in optimizer.param_groups:
            expected = curves[group["name"].removesuffix("_no_decay")](step)
            assert group["lr"] == pytest.approx(expected), (step, group["name"])
        optimizer.step()
        schedule.step()


def test_groups_split_backbone_pooler_and_heads_and_decay_from_no_decay():
    model = tiny_model(with_pooler=True, with_region_head=True)
    groups = {g["name"]: g for g in param_groups(model, CFG)}
    kinds = ("backbone", "pooler", "heads")
    assert set(groups) == {f"{kind}{suffix}" for kind in kinds for suffix in ("", "_no_decay")}
    assert {name: (g["lr"], g["weight_decay"]) for name, g in groups.items()} == {
        "backbone": (1e-5, 0.1),
        "backbone_no_decay": (1e-5, 0.0),
        "pooler": (1e-3, 0.1),
        "pooler_no_decay": (1e-3, 0.0),
        "heads": (1e-3, 0.1),
        "heads_no_decay": (1e-3, 0.0),
    }
    group_of = {id(p): name for name, g in groups.items() for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(group_of) == sum(len(g["params"]) for g in groups.values()) == len(named)  # each once
    assert group_of[id(named["clip.visual.proj"])] == "backbone"
    assert group_of[id(named["clip.logit_scale"])] == "backbone_no_decay"  # temperature
    assert group_of[id(named["clip.positional_embedding"])] == "backbone_no_decay"  # Long-CLIP's rows
    assert group_of[id(named["clip.ln_final.weight"])] == "backbone_no_decay"  # gain
    assert group_of[id(named["pooler.logit_scale"])] == "pooler_no_decay"
    for name, p in named.items():
        kind = "backbone" if name.startswith("clip.") else "pooler" if name.startswith("pooler.") else "heads"
        assert group_of[id(p)].startswith(kind), name
        if p.ndim < 2:
            assert group_of[id(p)].endswith("_no_decay"), name


def test_frozen_parameters_and_empty_groups_are_left_out():
    model = tiny_model(with_pooler=False, with_region_head=False)
    model.clip.text_projection.requires_grad_(False)
    groups = param_groups(model, CFG)
    assert {g["name"] for g in groups} == {"backbone", "backbone_no_decay"}  # no heads in this model
    assert all(p is not model.clip.text_projection for g in groups for p in g["params"])
