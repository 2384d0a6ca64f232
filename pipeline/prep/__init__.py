"""Data prep on Ray: reader → workers (image, text, grounding) → shard writer → manifest."""

from pipeline.prep.config import PrepConfig
from pipeline.prep.job import run

__all__ = ["PrepConfig", "run"]
