"""Phrase → region grounders behind one small interface; ``build_grounder`` picks one by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.grounding.annotations import AnnotationGrounder
from pipeline.grounding.base import Annotation, Grounder, Grounding, GroundingRequest
from pipeline.grounding.none import NoGrounder

_GROUNDERS = {"annotations": AnnotationGrounder, "none": NoGrounder}


@dataclass(frozen=True)
class GroundingConfig:
    name: Literal["annotations", "none"] = "annotations"

    def __post_init__(self) -> None:
        if self.name not in _GROUNDERS:
            raise ValueError(f"name: {self.name!r} is not one of {', '.join(_GROUNDERS)}")


def build_grounder(cfg: GroundingConfig) -> Grounder:
    return _GROUNDERS[cfg.name]()


__all__ = ["Annotation", "Grounder", "Grounding", "GroundingConfig", "GroundingRequest", "build_grounder"]
