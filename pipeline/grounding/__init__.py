"""Phrase → region grounders behind one small interface (``base.Grounder``); ``build_grounder``
picks one by name (``config.GroundingConfig``).

A grounder's module is imported only when one is built: the detector's imports torch and
transformers, which nothing else (the data-prep driver, a config check) should pay for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.grounding.base import Grounder
    from pipeline.grounding.config import GroundingConfig


def build_grounder(cfg: GroundingConfig) -> Grounder:
    if cfg.name == "detector":
        from pipeline.grounding.detector import DetectorGrounder

        return DetectorGrounder(cfg.detector)
    if cfg.name == "annotations":
        from pipeline.grounding.annotations import AnnotationGrounder

        return AnnotationGrounder()
    if cfg.name == "plugin":
        module, _, name = cfg.plugin.partition(":")
        return getattr(importlib.import_module(module), name)()
    from pipeline.grounding.none import NoGrounder

    return NoGrounder()
