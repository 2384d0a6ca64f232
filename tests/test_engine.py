"""The DeepSpeed config the engine is built from: what it asks for, and that DeepSpeed reads it so."""

import pytest
import torch
from deepspeed.runtime.config import DeepSpeedConfig
from helpers import REPO

from pipeline.config import load_config
from pipeline.training.config import TrainConfig
from pipeline.training.distributed import World
from pipeline.training.engine import deepspeed_config

CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)


def config(*overrides: str) -> TrainConfig:
    return load_config(TrainConfig, REPO / "configs/train/beta_tiny.yaml", ["output=run", *overrides])


def world(size: int, device: torch.device = CPU) -> World:
    return World(rank=0, size=size, local_rank=0, device=device)


def test_global_batch_is_micro_batch_times_accumulation_times_ranks():
    ds = deepspeed_config(config("data.batch_size=16", "grad_accum=4"), world(8))
    assert ds["train_micro_batch_size_per_gpu"] == 16 and ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 16 * 4 * 8


@pytest.mark.parametrize(
    "overrides, device, bf16",
    [
        ((), CPU, False),  # auto: fp32 on CPUs
        ((), GPU, True),  # auto: bf16 on GPUs
        (("precision=fp32",), GPU, False),
        (("precision=bf16",), GPU, True),
    ],
)
def test_precision_auto_is_bf16_on_gpus_only(overrides, device, bf16):
    assert deepspeed_config(config(*overrides), world(1, device))["bf16"] == {"enabled": bf16}


def test_zero_stage_clipping_and_resized_resume_pass_through():
    ds = deepspeed_config(config("zero_stage=3", "optim.grad_clip=0.5"), world(2), load_universal=True)
    assert ds["zero_optimization"] == {"stage": 3} and ds["gradient_clipping"] == 0.5
    assert ds["checkpoint"] == {"load_universal": True}
    assert deepspeed_config(config(), world(2))["checkpoint"] == {"load_universal": False}


def test_deepspeed_reads_the_config_as_meant():
    """No key misspelt or misplaced: DeepSpeed's own parser sees the values (one rank, as this
    process is outside any process group)."""
    cfg = config("data.batch_size=4", "grad_accum=2", "zero_stage=3", "optim.grad_clip=0.5")
    ds = DeepSpeedConfig(deepspeed_config(cfg, world(1, GPU), load_universal=True))
    assert (ds.train_micro_batch_size_per_gpu, ds.gradient_accumulation_steps, ds.train_batch_size) == (
        4,
        2,
        8,
    )
    assert ds.zero_optimization_stage == 3 and ds.gradient_clipping == 0.5
    assert ds.bfloat16_config.enabled and ds.load_universal_checkpoint and ds.zero_allow_untested_optimizer
