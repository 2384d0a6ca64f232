"""Typed configuration of the grounding stage (``grounding:`` in ``configs/prep/*.yaml``).

Kept apart from the grounders so that reading a config (the data-prep driver does) imports
neither torch nor transformers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

from pipeline.config import at_least, check_choices

GrounderName = Literal["annotations", "detector", "none", "plugin"]
GROUNDERS: tuple[str, ...] = get_args(GrounderName)


@dataclass(frozen=True)
class DetectorConfig:
    """The ``grounding.detector`` section (read only with ``grounding.name: detector``)."""

    model: str = "google/owlv2-base-patch16-ensemble"  # hub id or local directory (from_pretrained)
    revision: str | None = None  # hub branch, tag or commit to pin; None: the default branch
    score_threshold: float = 0.1  # a phrase links only to a box scored at least this (sigmoid)
    nms_iou: float = 0.7  # boxes of two phrases overlapping more than this become one region
    max_queries: int = 32  # noun-chunk phrases per image sent as queries, in reading order
    batch_size: int = 8  # images per forward pass (GPU memory), within a worker's grounding call
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto: float16 on GPU, else float32

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model: required (a Hugging Face hub id or a local directory)")
        for name in ("score_threshold", "nms_iou"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: must be in [0, 1], got {getattr(self, name)}")
        check_choices(self)
        at_least(self, 1, "max_queries", "batch_size")


@dataclass(frozen=True)
class GroundingConfig:
    name: GrounderName = "annotations"
    detector: DetectorConfig | None = None  # only with name=detector, which fills in the defaults
    # name=plugin: a grounder of your own, "package.module:Class" (base.Grounder, built with no
    # arguments), importable on every worker (installed, or in `ray job submit --working-dir`)
    plugin: str = ""

    def __post_init__(self) -> None:
        check_choices(self)
        if (self.name == "plugin") != bool(self.plugin):
            raise ValueError("plugin: set it (as package.module:Class) exactly when name is plugin")
        if self.plugin and not re.fullmatch(r"[\w.]+:\w+", self.plugin):
            raise ValueError(f"plugin: {self.plugin!r} is not package.module:Class")
        if self.name == "detector" and self.detector is None:
            object.__setattr__(self, "detector", DetectorConfig())
        if self.name != "detector" and self.detector is not None:
            raise ValueError(
                f"detector: set, but name is {self.name!r}; the section is read only by name=detector"
            )
