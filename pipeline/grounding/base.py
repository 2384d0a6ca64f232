"""The grounder interface: batches of (image, phrases) → regions, and which phrase shows which.

Batched so that a detector grounder can run one forward pass per batch on a GPU actor;
``needs_image`` lets the stage skip decoding pixels for grounders that only read annotations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image

from pipeline.schema import Phrase, Region
from pipeline.text.lexeme import Lexeme


@dataclass(frozen=True)
class Annotation:
    box: tuple[float, float, float, float]  # cleaned (schema.clean_box), in stored-image pixels
    label: str
    lexeme: Lexeme  # of the label, from the same spaCy model as the phrases


@dataclass(frozen=True)
class GroundingRequest:
    width: int
    height: int
    phrases: list[Phrase]
    lexemes: list[Lexeme | None]  # parallel to phrases
    annotations: list[Annotation]
    image: Image.Image | None = None  # decoded only for grounders that need pixels
    sentences: list[str] = field(default_factory=list)  # the hierarchy's; phrases index into it


@dataclass(frozen=True)
class Grounding:
    regions: list[Region]
    phrase_regions: list[int | None]  # parallel to the request's phrases: index into regions
    ambiguous: int = 0  # phrases left unlinked because several regions fit them equally well


class Grounder(Protocol):
    name: str
    needs_image: bool

    def ground(self, requests: list[GroundingRequest]) -> list[Grounding]: ...

    def provenance(self) -> dict: ...
