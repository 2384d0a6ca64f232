"""Typed configuration of a training run (``configs/train/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.models import ModelConfig
from pipeline.objectives import ObjectiveConfig
from pipeline.training.data import DataConfig


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with two learning rates: the pretrained backbone moves slowly, new heads fast."""

    lr: float = 1e-5  # backbone (β-CLIP: 1e-5)
    head_lr: float = 1e-3  # pooler and region head (β-CLIP's pooler: 1e-3)
    weight_decay: float = 0.1  # not on gains, biases, temperatures or positional embeddings
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 100  # linear warmup, then cosine decay to 0 at the last step
    grad_clip: float = 1.0  # global gradient norm; 0 turns clipping off

    def __post_init__(self) -> None:
        for key in ("lr", "head_lr"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key}: must be > 0, got {getattr(self, key)}")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.warmup_steps < 0:
            raise ValueError("weight_decay, grad_clip, warmup_steps: must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas: expected two values in [0, 1), got {list(self.betas)}")


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 500  # steps between checkpoints (the last step is always saved)
    keep_last: int = 3
    resume: bool = True  # continue from the run folder's latest checkpoint when there is one

    def __post_init__(self) -> None:
        if self.every < 1 or self.keep_last < 1:
            raise ValueError(f"every, keep_last: must be >= 1, got {self.every}, {self.keep_last}")


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig
    output: str = ""  # run folder: checkpoints/, metrics.jsonl, export/
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    steps: int = 1000  # optimizer steps of the whole run (the schedule's length)
    grad_accum: int = 1  # micro-batches per optimizer step
    zero_stage: Literal[0, 1, 2, 3] = 2
    device: Literal["auto", "cuda", "cpu"] = "auto"  # cpu: gloo and fp32; auto: cuda when there is one
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on GPUs, fp32 on CPUs
    seed: int = 0  # model initialisation; the loader has its own (data.seed)
    log_every: int = 10
    replica_check_every: int = 0  # steps between checks that all ranks hold identical parameters; 0: off
    stop_after: int | None = None  # end this run after that step, checkpointed (time-boxed jobs)
    peak_tflops: float = 989.0  # per-GPU dense bf16 peak for the MFU estimate (H100 SXM)

    def __post_init__(self) -> None:
        if not self.output:
            raise ValueError("output: required (run folder)")
        for key in ("steps", "grad_accum", "log_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.replica_check_every < 0:
            raise ValueError(f"replica_check_every: must be >= 0, got {self.replica_check_every}")
        if self.replica_check_every and self.zero_stage == 3:
            raise ValueError(
                "replica_check_every: ZeRO-3 partitions the parameters, so ranks hold no "
                "replicas to compare; use it with zero_stage 0-2"
            )
        if self.stop_after is not None and not 1 <= self.stop_after <= self.steps:
            raise ValueError(f"stop_after: must be in 1..steps ({self.steps}), got {self.stop_after}")
        if self.device == "cpu" and self.precision == "bf16":
            raise ValueError(
                "precision: bf16 on CPU is not supported here (AVX2 CPUs run it ~6x slower); use fp32 or auto"
            )
        if self.peak_tflops <= 0:
            raise ValueError(f"peak_tflops: must be > 0, got {self.peak_tflops}")
