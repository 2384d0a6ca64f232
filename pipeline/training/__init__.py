"""Training: loader, engine, checkpoints (DeepSpeed ZeRO)."""
