"""The ``none`` grounder: samples carry phrases but no regions (e.g. for β-CLIP-only data)."""

from __future__ import annotations

from pipeline.grounding.base import Grounding, GroundingRequest


class NoGrounder:
    name = "none"
    needs_image = False

    def ground(self, requests: list[GroundingRequest]) -> list[Grounding]:
        return [Grounding([], [None] * len(r.phrases)) for r in requests]

    def provenance(self) -> dict:
        return {"name": self.name}
