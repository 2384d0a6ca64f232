"""The ``annotations`` grounder: the record's own boxes become regions, and phrases link to them
by head-noun lemma plus attribute agreement (docs/text_and_grounding.md has the rule)."""

from __future__ import annotations

from pipeline.grounding.base import Annotation, Grounding, GroundingRequest
from pipeline.schema import Region
from pipeline.text import Lexeme

RULE = "head-lemma+attribute-agreement/v1"


class AnnotationGrounder:
    name = "annotations"
    needs_image = False

    def ground(self, requests: list[GroundingRequest]) -> list[Grounding]:
        return [ground_request(r) for r in requests]

    def provenance(self) -> dict:
        return {"name": self.name, "rule": RULE}


def ground_request(request: GroundingRequest) -> Grounding:
    """Every annotation is a region (same order); each phrase links to its unique best match."""
    regions = [Region(a.box, 1.0, "annotation", a.label) for a in request.annotations]
    links = [best_match(lexeme, request.annotations) if lexeme else [] for lexeme in request.lexemes]
    return Grounding(regions, [m[0] if len(m) == 1 else None for m in links],
                     ambiguous=sum(len(m) > 1 for m in links))


def best_match(phrase: Lexeme, annotations: list[Annotation]) -> list[int]:
    """Indices of the annotations that fit ``phrase`` best; one index is a link, several a tie.

    A label fits when its head lemma equals the phrase's and it does not contradict the phrase:
    a label with attributes must have every attribute the phrase states ("red circle" fits
    "large red circle", "blue circle" does not); a bare label ("circle") fits any phrase with
    that head. The best fits share the most attributes with the phrase.
    """
    shared = {i: len(set(phrase.modifiers) & set(a.lexeme.modifiers))
              for i, a in enumerate(annotations) if phrase.head and _fits(phrase, a.lexeme)}
    top = max(shared.values(), default=0)
    return [i for i, n in shared.items() if n == top]


def _fits(phrase: Lexeme, label: Lexeme) -> bool:
    agrees = not label.modifiers or set(phrase.modifiers) <= set(label.modifiers)
    return label.head == phrase.head and agrees
