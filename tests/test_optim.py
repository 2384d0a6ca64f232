"""The optimizer's parameter groups and the warmup + cosine schedule, without an engine."""

import math

import pytest
import torch
from helpers import tiny_model

from pipeline.training.config import OptimConfig
from pipeline.training.optim import build_schedule, lr_factor, param_groups

CFG = OptimConfig(lr=1e-5, head_lr=1e-3, weight_decay=0.1, warmup_steps=10)


def test_warmup_rises_linearly_to_the_base_lr():
    assert [lr_factor(s, warmup=4, total=100) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_cosine_falls_from_one_to_zero_at_the_last_step_and_stays_there():
    warmup, total = 10, 110
    assert lr_factor(warmup, warmup, total) == 1.0
    assert lr_factor(warmup + 50, warmup, total) == pytest.approx(0.5)  # halfway through the decay
    assert lr_factor(warmup + 25, warmup, total) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(total, warmup, total) == pytest.approx(0.0)
    assert lr_factor(total + 5, warmup, total) == pytest.approx(0.0)  # stop_after past the end
    decay = [lr_factor(s, warmup, total) for s in range(warmup, total + 1)]
    assert decay == sorted(decay, reverse=True)


def test_no_warmup_starts_at_the_base_lr():
    assert lr_factor(0, warmup=0, total=10) == 1.0
    assert lr_factor(0, warmup=0, total=0) == 1.0  # a one-step run divides by nothing


def test_schedule_scales_both_learning_rates_by_the_same_factor():
    model = tiny_model()
    optimizer = torch.optim.AdamW(param_groups(model, CFG))
    schedule = build_schedule(optimizer, CFG, total_steps=50)
    for step in range(50):
        for group in optimizer.param_groups:
            base = CFG.head_lr if group["name"].startswith("heads") else CFG.lr
            assert group["lr"] == pytest.approx(base * lr_factor(step, 10, 50)), (step, group["name"])
        optimizer.step()
        schedule.step()


def test_groups_split_backbone_from_heads_and_decay_from_no_decay():
    model = tiny_model(with_pooler=True, with_region_head=True)
    groups = {g["name"]: g for g in param_groups(model, CFG)}
    assert set(groups) == {"backbone", "backbone_no_decay", "heads", "heads_no_decay"}
    assert {name: (g["lr"], g["weight_decay"]) for name, g in groups.items()} == {
        "backbone": (1e-5, 0.1),
        "backbone_no_decay": (1e-5, 0.0),
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
    assert group_of[id(named["pooler.logit_scale"])] == "heads_no_decay"
    for name, p in named.items():
        head = not name.startswith("clip.")
        assert group_of[id(p)].startswith("heads" if head else "backbone"), name
        if p.ndim < 2:
            assert group_of[id(p)].endswith("_no_decay"), name


def test_frozen_parameters_and_empty_groups_are_left_out():
    model = tiny_model(with_pooler=False, with_region_head=False)
    model.clip.text_projection.requires_grad_(False)
    groups = param_groups(model, CFG)
    assert {g["name"] for g in groups} == {"backbone", "backbone_no_decay"}  # no heads in this model
    assert all(p is not model.clip.text_projection for g in groups for p in g["params"])
