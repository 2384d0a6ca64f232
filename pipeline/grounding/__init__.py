"""Phrase → region grounders behind one small interface; ``build_grounder`` picks one by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.grounding.annotations import AnnotationGrounder
from pipeline.grounding.base import Annotation, Grounder, Grounding, GroundingRequest
from pipeline.grounding.detector import DetectorConfig, DetectorGrounder
from pipeline.grounding.none import NoGrounder

_GROUNDERS = {"annotations": AnnotationGrounder, "detector": DetectorGrounder, "none": NoGrounder}


@dataclass(frozen=True)
class GroundingConfig:
    name: Literal["annotations", "detector", "none"] = "annotations"
    detector: DetectorConfig | None = None  # only with name=detector, which fills in the defaults

    def __post_init__(self) -> None:
        if self.name not in _GROUNDERS:
            raise ValueError(f"name: {self.name!r} is not one of {', '.join(_GROUNDERS)}")
        if self.name == "detector" and self.detector is None:
            object.__setattr__(self, "detector", DetectorConfig())
        if self.name != "detector" and self.detector is not None:
            raise ValueError(f"detector: set, but name is {self.name!r}; the section is read only by "
                             "name=detector")


def build_grounder(cfg: GroundingConfig) -> Grounder:
    return DetectorGrounder(cfg.detector) if cfg.name == "detector" else _GROUNDERS[cfg.name]()


__all__ = ["Annotation", "DetectorConfig", "Grounder", "Grounding", "GroundingConfig", "GroundingRequest",
           "build_grounder"]
