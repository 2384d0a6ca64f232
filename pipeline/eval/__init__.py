"""Evaluation: long-caption retrieval, box classification and FG-OVD-style scoring, and a report."""

from pipeline.eval.config import EvalConfig
from pipeline.eval.run import evaluate

__all__ = ["EvalConfig", "evaluate"]
