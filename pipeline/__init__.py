"""Fine-grained CLIP pretraining: Ray data prep, DeepSpeed ZeRO training under Slurm."""

__version__ = "0.1.0"
