"""Typed configuration of a training run (``configs/train/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config import DeviceChoice, at_least, check_choices, positive
from pipeline.models import ModelConfig
from pipeline.objectives import ObjectiveConfig


@dataclass(frozen=True)
class DataConfig:
    manifests: tuple[str, ...]  # dataset folders or dataset.json paths
    batch_size: int  # per rank
    weights: tuple[float, ...] = ()  # per dataset, resampled mode only; default: equal shares
    workers: int = 2  # DataLoader worker processes; 0 decodes in the training process
    mode: Literal["epochs", "resampled"] = "epochs"
    shuffle_buffer: int = 1000  # samples; 1 keeps shard order
    num_sentences: int = 5  # S: text slots K = 1 + S + P
    num_phrases: int = 30  # P
    num_regions: int = 16  # R
    # Which texts fill the slots. "first": the caption, its first S sentences, its first P phrases.
    # "sampled" (β-CLIP's datasets.py): each read draws S sentences (all, when fewer); the caption
    # slot is them joined with ". ", and the phrases are theirs: noun chunks, then relations, then
    # spatial ones, each string once, the first P.
    texts: Literal["first", "sampled"] = "first"
    # Image augmentation: () keeps the whole image, squashed to the model's square; (lo, hi):
    # RandomResizedCrop of that share of the area (β-CLIP: (0.5, 1)), boxes cut to the crop.
    crop_scale: tuple[float, ...] = ()
    seed: int = 0  # also draws each read's sentences and crop, from (seed, epoch, sample key)

    def __post_init__(self) -> None:
        if not self.manifests or not all(self.manifests):
            raise ValueError("manifests: required (one or more dataset folders or dataset.json paths)")
        if self.weights and len(self.weights) != len(self.manifests):
            raise ValueError(f"weights: {len(self.weights)} weights for {len(self.manifests)} manifests")
        if any(not w > 0 for w in self.weights):
            raise ValueError(f"weights: must all be > 0, got {list(self.weights)}")
        check_choices(self)
        if self.weights and self.mode == "epochs":
            raise ValueError(
                "weights: mixing weights need mode=resampled (an epoch reads every "
                "sample of every dataset once)"
            )
        if self.crop_scale and not (
            len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1
        ):
            raise ValueError(
                f"crop_scale: expected [lo, hi] with 0 < lo <= hi <= 1, got {list(self.crop_scale)}"
            )
        at_least(self, 1, "batch_size", "shuffle_buffer")
        at_least(self, 0, "workers", "num_sentences", "num_phrases", "num_regions", "seed")

    @property
    def num_slots(self) -> int:
        return 1 + self.num_sentences + self.num_phrases


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with two learning rates: the pretrained backbone moves slowly, new heads fast."""

    lr: float = 1e-5  # backbone (β-CLIP: 1e-5)
    head_lr: float = 1e-3  # pooler and region head (β-CLIP's pooler: 1e-3)
    weight_decay: float = 0.1  # not on gains, biases, temperatures or positional embeddings
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    # Each group warms up linearly from warmup_start_lr to its lr, then decays on a cosine to its
    # end at the last step (optim.lr_at: β-CLIP's utils.cosine_scheduler).
    warmup_steps: int = 100  # the backbone's warmup
    head_warmup_steps: int | None = None  # the heads'; None: warmup_steps
    # β-CLIP's pooler on a schedule of its own (its official one: 1e-3 → 1e-4, no warmup), while a
    # region head keeps the heads'; None: the heads' warmup and end
    pooler_warmup_steps: int | None = None
    warmup_start_lr: float | None = None  # None: a group's lr / its warmup (step s at (s+1)/warmup)
    lr_end: float = 0.0  # the backbone's lr at the last step
    head_lr_end: float = 0.0
    pooler_lr_end: float | None = None
    grad_clip: float = 1.0  # global gradient norm; 0 turns clipping off

    def __post_init__(self) -> None:
        positive(self, "lr", "head_lr", "eps")
        at_least(
            self, 0, "weight_decay", "grad_clip", "warmup_steps", "head_warmup_steps", "pooler_warmup_steps"
        )
        at_least(self, 0, "warmup_start_lr", "lr_end", "head_lr_end", "pooler_lr_end")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas: expected two values in [0, 1), got {list(self.betas)}")


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 500  # steps between checkpoints (the last step is always saved)
    keep_last: int = 3
    resume: bool = True  # continue from the run folder's latest checkpoint when there is one
    # steps between the ranks' checks for a preemption signal (SIGUSR1/SIGTERM): a signalled run
    # saves within this many steps; each check is one all-reduce that waits for the device
    preemption_check_every: int = 10

    def __post_init__(self) -> None:
        at_least(self, 1, "every", "keep_last", "preemption_check_every")


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
    device: DeviceChoice = "auto"  # cpu: gloo and fp32; auto: cuda when there is one
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on GPUs, fp32 on CPUs
    seed: int = 0  # model initialisation; the loader has its own (data.seed)
    log_every: int = 10
    tensorboard: bool = True  # the logged metrics also as TensorBoard event files, OUTPUT/tensorboard/
    replica_check_every: int = 0  # steps between checks that all ranks hold identical parameters; 0: off
    stop_after: int | None = None  # end this run after that step, checkpointed (time-boxed jobs)
    # per-GPU dense bf16 peak for MFU; null: by the GPU's name (pipeline.device), none if unknown
    peak_tflops: float | None = None

    def global_batch(self, world_size: int) -> int:
        """Samples per optimizer step: batch_size × grad_accum × ranks."""
        return self.data.batch_size * self.grad_accum * world_size

    def __post_init__(self) -> None:
        if not self.output:
            raise ValueError("output: required (run folder)")
        check_choices(self)
        at_least(self, 1, "steps", "grad_accum", "log_every")
        at_least(self, 0, "replica_check_every")
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
        if self.peak_tflops is not None:
            positive(self, "peak_tflops")
