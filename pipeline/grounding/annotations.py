"""The ``annotations`` grounder: the record's own boxes become regions, and phrases link to them
by head-noun lemma plus attribute agreement (docs/text_and_grounding.md has the rule)."""

from __future__ import annotations

from pipeline.grounding.base import Annotation, Grounding, GroundingRequest
from pipeline.schema import Region
from pipeline.text.lexeme import Lexeme

RULE = "head-lemma+attribute-agreement+sentence-label/v2"


class AnnotationGrounder:
    name = "annotations"
    needs_image = False

    def ground(self, requests: list[GroundingRequest]) -> list[Grounding]:
        return [ground_request(r) for r in requests]

    def provenance(self) -> dict:
        return {"name": self.name, "rule": RULE}


def ground_request(request: GroundingRequest) -> Grounding:
    """Every annotation is a region (same order); each phrase links to its unique best match,
    or, among tied best matches, to the one labelled with its sentence (:func:`sentence_labels`)."""
    regions = [Region(a.box, 1.0, "annotation", a.label) for a in request.annotations]
    named = sentence_labels(request)
    links = []
    for i, lexeme in enumerate(request.lexemes):
        match = best_match(lexeme, request.annotations) if lexeme else []
        links.append([named[i]] if len(match) > 1 and named.get(i) in match else match)
    return Grounding(
        regions, [m[0] if len(m) == 1 else None for m in links], ambiguous=sum(len(m) > 1 for m in links)
    )


def best_match(phrase: Lexeme, annotations: list[Annotation]) -> list[int]:
    """Indices of the annotations that fit ``phrase`` best; one index is a link, several a tie.

    A label fits when its head lemma equals the phrase's and it does not contradict the phrase:
    a label with attributes must have every attribute the phrase states ("red circle" fits
    "large red circle", "blue circle" does not); a bare label ("circle") fits any phrase with
    that head. The best fits share the most attributes with the phrase.
    """
    shared = {
        i: len(set(phrase.modifiers) & set(a.lexeme.modifiers))
        for i, a in enumerate(annotations)
        if phrase.head and _fits(phrase, a.lexeme)
    }
    top = max(shared.values(), default=0)
    return [i for i, n in shared.items() if n == top]


def sentence_labels(request: GroundingRequest) -> dict[int, int]:
    """Phrase index → the one annotation whose label is that phrase's whole sentence, for the
    first phrase with a lexeme in each sentence: a label's lexeme is its first noun chunk's,
    so that phrase is the one such a label names (Visual Genome: a region's phrase is a sentence)."""
    by_text: dict[str, list[int]] = {}
    for i, a in enumerate(request.annotations):
        by_text.setdefault(_plain(a.label), []).append(i)
    named: dict[int, int] = {}
    seen: set[int] = set()
    for i, (phrase, lexeme) in enumerate(zip(request.phrases, request.lexemes)):
        if lexeme is None or phrase.sentence in seen or phrase.sentence >= len(request.sentences):
            continue
        seen.add(phrase.sentence)
        labelled = by_text.get(_plain(request.sentences[phrase.sentence]), [])
        if len(labelled) == 1:
            named[i] = labelled[0]
    return named


def _plain(text: str) -> str:
    """Text compared without case, spacing or final punctuation ("Man in a hat." = "man in a  hat")."""
    return " ".join(text.lower().split()).rstrip(".!? ")


def _fits(phrase: Lexeme, label: Lexeme) -> bool:
    agrees = not label.modifiers or set(phrase.modifiers) <= set(label.modifiers)
    return label.head == phrase.head and agrees
